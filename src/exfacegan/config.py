"""Checks on a composed config that run before any heavy work, and the resolvers every user of the configs needs.

`validate_config` checks every setting in three passes: the `SETTINGS` table (type and range per dotted key,
skipped where a group option lacks the key); the option objects the stages build (`FitOptions`, `OffsetSpec`,
`Truncation`), typed from their annotations and then constructed, so their own rules run now, not when their
stage starts; and the settings that depend on each other or on the machine.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from exfacegan.devices import resolve_device
from exfacegan.errors import ConfigError, ExFaceGANError, did_you_mean
from exfacegan.weights import preflight

KNOWN_STAGES = ("sample", "label", "fit", "generate", "merge", "analyze")
# What to give for the settings that configs leave mandatory (???).
MISSING_HINTS = {
    "embedder.checkpoint": "the .pth state dict of an arcface_torch iresnet backbone",
    "gan.network.source": "an official checkpoint path or a registry name",
    "embedder.path": "an ONNX face model file or a registry name",
}
# Typical encoded size of one 112x112 face, with headroom.
BYTES_PER_IMAGE = {"png": 30_000, "jpg": 8_000}
MAX_SEED = 2**32 - 1
_ABSENT = object()


def register_resolvers() -> None:
    """The resolvers the configs use; every entry point (and any reader of a saved config) calls this first."""
    OmegaConf.register_new_resolver(
        "or_default", lambda value, default: default if value in (None, "") else value, replace=True
    )


def _precision(value: str) -> None:
    from exfacegan.precision import check_precision

    check_precision(value)


def _channels(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        from exfacegan.embedders.onnx import channel_values

        channel_values(value, name)

    return check


def _jobs(value: int) -> None:
    if value == 0 or value < -1:
        raise ConfigError(f"must be -1 (all cores) or a number of processes >= 1, got {value}")


def _template(value: str) -> None:
    from exfacegan.align.template import template_points

    template_points(value)


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one setting may hold: a type (bools are not ints, floats are finite), a range, a set, or a check."""

    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    null: bool = False
    check: Callable[[Any], None] | None = None  # raises an ExFaceGANError naming what is allowed

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (the phrase after 'must be'), or None."""
        if value is None:
            return None if self.null else f"{self._expected()} (not null)"
        if not _is_kind(value, self.kind) or (self.choices and value not in self.choices):
            return self._expected()
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return self._expected()
        return None

    def _expected(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(
                self.kind, self.kind.__name__)
            if self.low is not None and self.high is not None:
                text += f" in [{self.low}, {self.high}]"
            elif self.low is not None:
                text += f" >= {self.low}"
        return text + (" or null" if self.null else "")


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


COUNT, SEED = Setting(int, low=1), Setting(int, low=0, high=MAX_SEED)
FLAG, TEXT = Setting(bool), Setting(str)
PRECISION = Setting(str, check=_precision)
EMBEDDER = {"precision": PRECISION, "compile": FLAG, "network.num_jitters": Setting(int, low=0),
            "network.padding": Setting(float, low=0), "path": TEXT, "checkpoint": TEXT,
            "mean": Setting(object, check=_channels("mean")), "std": Setting(object, check=_channels("std"))}
ALIGN = {"size": COUNT, "template": Setting(str, check=_template), "detector": Setting(str, choices=("hog", "cnn")),
         "upsample": Setting(int, low=0), "min_score": Setting(float), "min_face_size": Setting(int, low=0),
         "detect_size": Setting(int, low=1, null=True)}
# Every setting that no option object below checks. Keys a group option lacks are skipped.
SETTINGS: dict[str, Setting] = {
    "run_dir": Setting(str, null=True),
    "cache_dir": Setting(str, null=True),
    "overwrite": FLAG,
    "device": TEXT,
    "gan.batch_size": COUNT,
    "gan.noise_mode": Setting(str, choices=("const", "random", "none")),
    "gan.precision": PRECISION,
    "gan.compile": FLAG,
    "gan.truncation.cutoff": Setting(int, low=0, null=True),
    "sample.num_samples": Setting(int, low=2),
    "sample.seed": SEED,
    "sample.batch_size": COUNT,
    "sample.preview": COUNT,
    "sample.randomize_attributes": FLAG,
    "sample.z_stream": Setting(str, choices=("seeded", "paper")),
    "fit.pairing": Setting(str, choices=("reference", "position")),
    "fit.references_per_chunk": COUNT,
    "generate.shard": Setting(int, low=0),
    "generate.num_shards": COUNT,
    "generate.references_per_chunk": COUNT,
    "analyze.max_impostor_pairs": COUNT,
    "analyze.batch_size": COUNT,
    "analyze.num_workers": Setting(int, low=0),
    "analyze.grid_identities": COUNT,
    "analyze.grid_images": COUNT,
    **{f"embedder.{key}": rule for key, rule in EMBEDDER.items()},
    **{f"analyze.judge.{key}": rule for key, rule in EMBEDDER.items()},
    **{f"filter.judge.{key}": rule for key, rule in EMBEDDER.items()},
    **{f"align.{key}": rule for key, rule in ALIGN.items()},
    **{f"label_align.{key}": rule for key, rule in ALIGN.items()},
    "label.num_references": Setting(int, low=1, null=True),
    "label.pool_size": Setting(int, low=2, null=True),
    "label.chunk_size": COUNT,
    "boundary.solver": Setting(str, choices=("svm", "batched", "ridge", "logistic")),
    "boundary.margin": Setting(float, low=0),
    "boundary.seed": SEED,
    "boundary.max_iter": Setting(int, low=1, null=True),
    "boundary.n_jobs": Setting(int, check=_jobs),
    "sampling.seed": SEED,
    "dataset.image_format": Setting(str, choices=tuple(BYTES_PER_IMAGE)),
    "dataset.jpeg_quality": Setting(int, low=1, high=100),
    "logger.mode": Setting(str, choices=("offline", "online", "disabled")),
    "logger.project": TEXT,
    "logger.entity": Setting(str, null=True),
}


def validate_config(cfg: DictConfig) -> None:
    """Refuse, in one line, any setting that would fail later; a single stage name becomes a one-element list."""
    missing = _missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if missing:
        hints = "; ".join(f"{key}: {MISSING_HINTS[key]}" for key in missing if key in MISSING_HINTS)
        raise ConfigError(
            f"set {', '.join(f'{key}=...' for key in missing)} on the command line"
            + (f" ({hints})" if hints else "") + "; experiment=smoke runs without any checkpoint"
        )
    if isinstance(cfg.stages, str):
        cfg.stages = [cfg.stages]
    _check_stages(cfg.stages)
    for key, setting in SETTINGS.items():
        value = _value(cfg, key)
        if value is not _ABSENT:
            _check(key, setting, value)
    _check_option_objects(cfg)
    _check_relations(cfg)
    _check_identity_controls(cfg)
    resolve_device(cfg.device)
    if "generate" in cfg.stages:
        _check_disk_space(cfg, cfg.label.num_references or cfg.label.get("pool_size") or cfg.sample.num_samples)
    preflight(cfg)


def _value(cfg: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{key}: {str(error).splitlines()[0]}") from None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _check(key: str, setting: Setting, value: Any) -> None:
    problem = setting.problem(value)
    if problem is not None:
        raise ConfigError(f"{key} must be {problem}, got {value!r}")
    if setting.check is not None and value is not None:
        try:
            setting.check(value)
        except ExFaceGANError as error:
            raise ConfigError(str(error) if str(error).startswith(key) else f"{key}: {error}") from None


def _check_stages(stages: Any) -> None:
    if not OmegaConf.is_list(stages) or not stages or not all(isinstance(stage, str) for stage in stages):
        raise ConfigError(f"stages must be a list of stage names such as [sample,label], got {stages!r}")
    unknown = [stage for stage in stages if stage not in KNOWN_STAGES]
    if unknown:
        raise ConfigError(f"unknown stages {unknown}{did_you_mean(unknown[0], KNOWN_STAGES)}; choose from {list(KNOWN_STAGES)}")


def _check_option_objects(cfg: DictConfig) -> None:
    """Build the option objects of the fit and generate stages and the truncation now, with their own checks."""
    from exfacegan.boundary import FitOptions
    from exfacegan.gans.latent import Truncation
    from exfacegan.stages.generate import GenerateSpec
    from exfacegan.stages.offsets import OffsetSpec

    boundary = _value(cfg, "boundary")
    for key in ("solver", "margin"):
        boundary.pop(key, None)
    if boundary.get("device") == "auto":
        boundary["device"] = "cpu"  # the run's device, checked below
    elif "device" in boundary:
        _typed("boundary.device", boundary["device"], str)
        try:
            resolve_device(boundary["device"])
        except ConfigError as error:
            raise ConfigError(f"boundary.{error}") from None  # "device=..." -> "boundary.device=..."
    FitOptions.from_kwargs(_typed_options(FitOptions, boundary, "boundary"))
    OffsetSpec(**_typed_options(OffsetSpec, _value(cfg, "sampling"), "sampling"))
    Truncation(**_typed_options(Truncation, _value(cfg, "gan.truncation"), "gan.truncation"))
    GenerateSpec.from_config(cfg)
    for key in ("align", "label_align"):
        align = _value(cfg, key)
        if align is _ABSENT or align is None:
            continue
        if str(align.pop("_target_", "")).endswith("MTCNNAligner"):
            from exfacegan.align.mtcnn import check_mtcnn_settings

            try:
                check_mtcnn_settings(**align)
            except ConfigError as error:
                raise ConfigError(f"{key}: {error}" if key != "align" else str(error)) from None


def _check_identity_controls(cfg: DictConfig) -> None:
    from exfacegan.stages.identity_filter import check_identity_controls

    check_identity_controls(cfg)


def _check_relations(cfg: DictConfig) -> None:
    threshold = cfg.label.threshold
    if threshold != "median" and Setting(float, low=-1.0, high=1.0).problem(threshold) is not None:
        raise ConfigError(f"label.threshold must be 'median' or a cosine similarity in [-1, 1], got {threshold!r}")
    references, num_samples = cfg.label.num_references, cfg.sample.num_samples
    if references is not None and references > num_samples:
        raise ConfigError(f"label.num_references={references} must be between 1 and sample.num_samples={num_samples}")
    pool = cfg.label.get("pool_size")
    if pool is not None and pool > num_samples:
        raise ConfigError(f"label.pool_size={pool} must be at most sample.num_samples={num_samples}")
    if pool is not None and references is not None and references > pool:
        raise ConfigError(f"label.num_references={references} is more than label.pool_size={pool}: references are "
                          "the first codes of the pool")
    if not cfg.generate.shard < cfg.generate.num_shards:
        raise ConfigError(f"generate.shard={cfg.generate.shard} must be in [0, generate.num_shards={cfg.generate.num_shards})")
    for key in ("run_dir", "cache_dir"):
        path = cfg.get(key)
        if path and Path(path).exists() and not Path(path).is_dir():
            raise ConfigError(f"{key}={path} is an existing file, not a folder")
    _check_pose_variation(cfg)


LANDMARK_ALIGNERS = ("MTCNNAligner", "DlibAligner")


def _check_pose_variation(cfg: DictConfig) -> None:
    """sampling.pose: GAN-Control's orientation controller takes the range as its yaw range (whole degrees); a
    StyleGAN backbone needs a sample-stage aligner with landmarks (the yaw direction is learnt from the sampled
    faces' pose)."""
    yaw_range = OmegaConf.select(cfg, "sampling.pose.yaw_range", default=None)
    if yaw_range is None:
        return
    gan = " ".join(str(OmegaConf.select(cfg, f"gan.{key}._target_", default="")) for key in ("network", "small"))
    if "gan_control" in gan:
        whole = [isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in yaw_range]
        if not all(whole):
            raise ConfigError(f"with gan=gan_control sampling.pose.yaw_range is the orientation controller's yaw range "
                              f"and takes whole degrees, got {list(yaw_range)}")
        return
    key = "label_align" if cfg.get("label_align") is not None else "align"
    target = str(OmegaConf.select(cfg, f"{key}._target_", default=""))
    if not target.endswith(LANDMARK_ALIGNERS):
        raise ConfigError(f"sampling.pose needs an aligner that finds facial landmarks ({key}=mtcnn or {key}=dlib) "
                          f"to learn the yaw direction from the sampled faces; {key} is {target.rsplit('.', 1)[-1]}")


def _typed_options(spec: type, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`values` checked against the field annotations of the dataclass `spec` (unknown keys refused)."""
    hints = typing.get_type_hints(spec)
    fields = [field.name for field in dataclasses.fields(spec)]
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown setting {prefix}.{key}{did_you_mean(key, fields)}")
        _typed(f"{prefix}.{key}", value, hints[key])
    return values


def _typed(key: str, value: Any, annotation: Any) -> Any:
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or typing.get_origin(
        annotation) is typing.Union else (annotation,)
    null = type(None) in options
    kinds = [option for option in options if option is not type(None)]
    if len(kinds) == 1 and typing.get_origin(kinds[0]) is typing.Literal:
        literal = typing.get_args(kinds[0])
        _check(key, Setting(type(literal[0]), choices=literal, null=null), value)
    elif len(kinds) == 1 and kinds[0] in (int, float, bool, str):
        _check(key, Setting(kinds[0], null=null), value)
    return value


def _missing_keys(node: object, prefix: str = "") -> list[str]:
    """Dotted keys whose value is still `???` (OmegaConf.missing_keys trips over interpolations to them)."""
    if isinstance(node, dict):
        return [key for name, value in node.items() for key in _missing_keys(value, f"{prefix}{name}.")]
    if isinstance(node, list):
        return [key for index, value in enumerate(node) for key in _missing_keys(value, f"{prefix}{index}.")]
    return [prefix[:-1]] if node == "???" else []


def _check_disk_space(cfg: DictConfig, references: int) -> None:
    sides = 2 if cfg.sampling.both_sides else 1
    needed = references * sides * cfg.sampling.per_class * BYTES_PER_IMAGE[cfg.dataset.image_format] // cfg.generate.num_shards
    target = Path(cfg.run_dir or ".").resolve()
    while not target.exists():
        target = target.parent
    free = shutil.disk_usage(target).free
    if needed > free:
        raise ConfigError(
            f"the dataset needs about {needed / 1e9:.1f} GB but only {free / 1e9:.1f} GB are free under {target}"
        )
