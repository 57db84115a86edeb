"""Where each generated image's code comes from: seeded offsets along a reference's identity boundary.

Reference r (latent w, unit normal n toward the dissimilar side) gives class 2r the codes `w - u ⊙ n` and,
with `both_sides`, class 2r+1 the codes `w + u ⊙ n` (with `both_sides=false` the class is r), with
u ~ U(min_off, max_off) per dimension. Every render is a *draw* numbered t = 0, 1, 2, ... (its
`attempt`), and every random number of a draw comes from its own generator,

    np.random.default_rng([seed, reference, stream, attempt + 1])

so a draw is a pure function of (seed, reference, stream, attempt), whatever the sharding, batching or
interruptions. Offsets use stream 0 on both sides when `mirror` (the paper code: one u per draw, class 2r
gets `w - u ⊙ n` and class 2r+1 `w + u ⊙ n`), else stream `side`; GAN-Control's random attributes use
stream 2 + side (the sides of a mirrored pair keep their own attributes). Image slot k of a class first
renders draw t = k. With `include_reference`, slot 0 of class 2r is the reference itself (u = 0, attempt -1).

Pose variation (`sampling.pose.yaw_range=[low, high]`, off by default) draws a target yaw per draw from stream
4 + side, U(low, high), and adds (target − the reference's own yaw) · d_r, d_r the reference's yaw direction
orthogonal to its normal (`exfacegan.stages.pose_direction`); the reference itself (attempt -1) is not moved.
GAN-Control sets each image's pose through its orientation controller instead: there the range replaces the
controller's yaw range (-50..50) and no code is moved (`exfacegan.stages.generate.controller_yaw`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exfacegan.errors import ConfigError
from exfacegan.stages.pose_direction import PoseShift

SIDES = ("same", "other")
NO_FACE_POLICIES = ("redraw", "drop")
REFERENCE_ATTEMPT = -1
POSE_STREAM = 4  # + side
MAX_YAW = 90.0


@dataclass(frozen=True)
class PoseSpec:
    """`yaw_range`: the targeted yaw in degrees, [low, high] inside [-90, 90]; None: no pose variation."""

    yaw_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        value = self.yaw_range
        if value is None:
            return
        if (not isinstance(value, (list, tuple)) or len(value) != 2 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) for v in value)):
            raise ConfigError(f"sampling.pose.yaw_range must be null or [low, high] in degrees, got {value!r}")
        low, high = float(value[0]), float(value[1])
        if not -MAX_YAW <= low < high <= MAX_YAW:
            raise ConfigError(f"sampling.pose.yaw_range needs -90 <= low < high <= 90, got [{low}, {high}]")
        object.__setattr__(self, "yaw_range", (low, high))

    @property
    def active(self) -> bool:
        return self.yaw_range is not None


@dataclass(frozen=True)
class OffsetSpec:
    per_class: int = 50
    min_off: float = 0.0
    max_off: float = 30.0
    both_sides: bool = True
    mirror: bool = True  # one u per draw for both sides (the paper code); false: independent draws per side
    include_reference: bool = False
    on_no_face: str = "redraw"  # redraw: the slot takes the class's next draw; drop: the paper (fewer images)
    max_attempts: int | None = None  # renders per class with redraw; None: 3 x per_class
    seed: int = 0
    pose: PoseSpec | dict | None = None  # a dict from the config becomes a PoseSpec

    def __post_init__(self) -> None:
        if not isinstance(self.pose, PoseSpec):
            if self.pose is not None and not isinstance(self.pose, dict):
                raise ConfigError(f"sampling.pose must hold yaw_range, got {self.pose!r}")
            unknown = sorted(set(self.pose or {}) - {"yaw_range"})
            if unknown:
                raise ConfigError(f"unknown setting sampling.pose.{unknown[0]}; sampling.pose holds yaw_range")
            object.__setattr__(self, "pose", PoseSpec(**(self.pose or {})))
        _check_int("sampling.per_class", self.per_class, 1)
        _check_int("sampling.seed", self.seed, 0)
        bounds = (self.min_off, self.max_off)
        if any(isinstance(b, bool) or not isinstance(b, (int, float)) or not np.isfinite(b) for b in bounds):
            raise ConfigError(f"sampling.min_off and sampling.max_off must be finite numbers, got {bounds}")
        if not 0 <= self.min_off <= self.max_off:
            raise ConfigError(f"need 0 <= sampling.min_off <= sampling.max_off, got {self.min_off} and {self.max_off}")
        for key in ("both_sides", "mirror", "include_reference"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"sampling.{key} must be true or false, got {getattr(self, key)!r}")
        if self.on_no_face not in NO_FACE_POLICIES:
            raise ConfigError(f"sampling.on_no_face must be one of {list(NO_FACE_POLICIES)}, got {self.on_no_face!r}")
        if self.max_attempts is not None:
            _check_int("sampling.max_attempts", self.max_attempts, self.per_class,
                       "sampling.per_class, the first draws of a class")

    @property
    def sides(self) -> int:
        return 2 if self.both_sides else 1

    @property
    def attempts_per_class(self) -> int:
        """Renders a class may use: exactly per_class when dropping, else the re-draw budget."""
        if self.on_no_face == "drop":
            return self.per_class
        return 3 * self.per_class if self.max_attempts is None else self.max_attempts


def _check_int(key: str, value: object, low: int, low_name: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low_name or low}, got {value!r}")


@dataclass(frozen=True)
class Draw:
    """One render of a class: image slot `slot` tried with draw `attempt` (REFERENCE_ATTEMPT: the reference)."""

    cls: int
    reference: int
    side: int
    slot: int
    attempt: int


def draw_rng(seed: int, reference: int, stream: int, attempt: int) -> np.random.Generator:
    return np.random.default_rng([seed, reference, stream, attempt + 1])


def first_draws(references: np.ndarray, spec: OffsetSpec) -> list[Draw]:
    """Slot k of every class of these references, tried with draw k (the reference itself in slot 0 of 2r)."""
    draws = []
    for r in references.tolist():
        for side in range(spec.sides):
            cls = 2 * r + side if spec.both_sides else r
            for k in range(spec.per_class):
                attempt = REFERENCE_ATTEMPT if spec.include_reference and side == 0 and k == 0 else k
                draws.append(Draw(cls, r, side, k, attempt))
    return draws


def target_yaws(draws: list[Draw], spec: OffsetSpec) -> np.ndarray:
    """float64 [M]: each draw's targeted yaw in degrees; NaN without pose variation and for the reference itself."""
    targets = np.full(len(draws), np.nan)
    if spec.pose.active:
        for i, d in enumerate(draws):
            if d.attempt != REFERENCE_ATTEMPT:
                rng = draw_rng(spec.seed, d.reference, POSE_STREAM + d.side, d.attempt)
                targets[i] = rng.uniform(*spec.pose.yaw_range)
    return targets


def draw_codes(
    draws: list[Draw], reference_latents: np.ndarray, normals: np.ndarray, spec: OffsetSpec,
    pose: PoseShift | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """float32 codes [M, d] and int64 attribute seeds [M]; latents, normals and `pose` are indexed by reference id.
    With `spec.pose` active and `pose` given, each code also moves by (target yaw − the reference's yaw) along its
    reference's yaw direction."""
    dim = reference_latents.shape[1]
    offsets = np.zeros((len(draws), dim))
    drawn: dict[tuple[int, int, int], np.ndarray] = {}  # mirrored sides share one u: draw it once
    for i, d in enumerate(draws):
        if d.attempt != REFERENCE_ATTEMPT:
            key = (d.reference, 0 if spec.mirror else d.side, d.attempt)
            if key not in drawn:
                drawn[key] = draw_rng(spec.seed, *key).uniform(spec.min_off, spec.max_off, dim)
            offsets[i] = drawn[key]
    refs = np.array([d.reference for d in draws], dtype=np.int64)
    signs = np.array([1.0 if d.side else -1.0 for d in draws])
    codes = reference_latents[refs] + signs[:, None] * offsets * normals[refs]
    if spec.pose.active and pose is not None:
        turn = np.nan_to_num(target_yaws(draws, spec) - pose.reference_yaw[refs])
        codes = codes + turn[:, None] * pose.directions[refs]
    return codes.astype(np.float32), attribute_seeds(draws, spec)


def attribute_seeds(draws: list[Draw], spec: OffsetSpec) -> np.ndarray:
    """int64 [M]: the seed of each draw's random attributes (GAN-Control's controllers), stream 2 + side."""
    return np.array([draw_rng(spec.seed, d.reference, 2 + d.side, d.attempt).integers(2**62) for d in draws],
                    dtype=np.int64).reshape(len(draws))
