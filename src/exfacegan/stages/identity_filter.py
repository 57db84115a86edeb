"""Identity controls beyond the paper: distinct references (`references.max_similarity`, applied by the label
stage) and the generation-time identity filter (`filter.min_reference_similarity`, `filter.max_cross_similarity`).

The filter judges every rendered face that the aligner found with the judge embedder (`embedder@filter.judge`,
default: the run's embedder), by cosine similarity to two *reference images* per reference r, rendered,
aligned and rounded to uint8 exactly as class images are (same truncation, noise, precision, aligner):

- class 2r's reference image (class r with `sampling.both_sides=false`) is the reference code w itself (u = 0;
  the image `sampling.include_reference` puts in slot 0 of class 2r, with its GAN-Control attributes);
- class 2r+1 has no sampled code of its own, so its reference image is its draws' mean code `w + ū n`,
  ū = (min_off + max_off) / 2 in every dimension, with GAN-Control attributes from the seeded stream of
  side 1 and attempt -1 (`offsets.draw_rng(seed, r, 3, -1)`).

A face of class 2r+s is kept when its similarity to its own class's reference image is >= the first bound and
its similarity to the other class's reference image is <= the second (either bound null: not tested); a face
that fails is re-drawn like a face the aligner did not find, and counted in stats.json as
`rejected_reference_similarity` or `rejected_cross_similarity` (the first failed test). Reference images
depend only on (sampling.seed, r), so verdicts do not depend on sharding, chunking or interruptions. A
reference image without a face makes every face of its classes fail the tests that need it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from exfacegan.errors import ConfigError
from exfacegan.stages.generate import Acceptance, GenerateSpec, render_faces
from exfacegan.stages.offsets import REFERENCE_ATTEMPT, Draw, draw_rng

log = logging.getLogger(__name__)

# references -> uint8 reference images [len(references) * sides, 3, H, W] (side 0, 1 of each) and found flags
AnchorRenderer = Callable[[np.ndarray], tuple[torch.Tensor, list[bool]]]


def _bound(key: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= float(value) <= 1.0:
        raise ConfigError(f"{key} must be null or a cosine similarity in [-1, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class IdentityFilterSpec:
    min_reference_similarity: float | None = None
    max_cross_similarity: float | None = None

    def __post_init__(self) -> None:
        for key in ("min_reference_similarity", "max_cross_similarity"):
            _bound(f"filter.{key}", getattr(self, key))

    @property
    def active(self) -> bool:
        return self.min_reference_similarity is not None or self.max_cross_similarity is not None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> IdentityFilterSpec:
        node = OmegaConf.select(cfg, "filter", default=None)
        return cls(**{k: node.get(k) for k in ("min_reference_similarity", "max_cross_similarity")}) if node else cls()


def check_identity_controls(cfg: DictConfig) -> None:
    """The identity controls' settings, in one line each, before any network loads."""
    bound = _bound("references.max_similarity", OmegaConf.select(cfg, "references.max_similarity", default=None))
    if bound is not None and bound == -1.0:
        raise ConfigError("references.max_similarity=-1 accepts no code (similarities are never below -1)")
    check_real_bound(cfg)
    spec = IdentityFilterSpec.from_config(cfg)
    if spec.max_cross_similarity is not None and not cfg.sampling.both_sides:
        raise ConfigError("filter.max_cross_similarity compares a class with the other side of its boundary; "
                          "it needs sampling.both_sides=true")


def check_real_bound(cfg: DictConfig) -> None:
    """references.max_real_similarity needs references.real_gallery, a gallery exfacegan.data.gallery reads."""
    from pathlib import Path

    from exfacegan.data.gallery import FORMATS

    bound = _bound("references.max_real_similarity",
                   OmegaConf.select(cfg, "references.max_real_similarity", default=None))
    gallery = OmegaConf.select(cfg, "references.real_gallery", default=None)
    if bound is None:
        if gallery is not None:
            raise ConfigError("references.real_gallery is set but references.max_real_similarity is null: "
                              "give the bound too, or drop the gallery")
        return
    if gallery is None:
        raise ConfigError("references.max_real_similarity needs references.real_gallery=<real faces>: " + FORMATS)
    path = Path(str(gallery))
    if not path.exists():
        raise ConfigError(f"references.real_gallery={gallery} does not exist")
    if path.is_file() and path.suffix not in (".bin", ".npz"):
        raise ConfigError(f"references.real_gallery={gallery} is not a gallery; give {FORMATS}")


def identity_controls_payload(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the label and generate stages' fingerprints add for these controls: nothing while they are off, so
    that runs without them keep their fingerprints."""
    bound = OmegaConf.select(cfg, "references.max_similarity", default=None)
    label = {} if bound is None else {"references.max_similarity": bound}
    real_bound = OmegaConf.select(cfg, "references.max_real_similarity", default=None)
    if real_bound is not None:
        label.update({"references.max_real_similarity": real_bound,
                      "references.real_gallery": str(OmegaConf.select(cfg, "references.real_gallery"))})
    spec = IdentityFilterSpec.from_config(cfg)
    if not spec.active:
        return label, {}
    judge = OmegaConf.select(cfg, "filter.judge", default=None) or cfg.embedder
    return label, {"filter": vars(spec), "judge": OmegaConf.to_container(judge, resolve=True)}


def anchor_codes(references: np.ndarray, latents: np.ndarray, normals: np.ndarray,
                 spec: GenerateSpec) -> tuple[np.ndarray, np.ndarray]:
    """float32 codes [R * sides, d] of the reference images (w, then w + ū n) and their int64 attribute seeds."""
    offsets = spec.offsets
    refs = np.repeat(np.asarray(references, dtype=np.int64), offsets.sides)
    sides = np.tile(np.arange(offsets.sides), len(references))
    centre = (offsets.min_off + offsets.max_off) / 2
    codes = latents[refs].astype(np.float64) + (sides * centre)[:, None] * normals[refs]
    seeds = np.array([draw_rng(offsets.seed, r, 2 + s, REFERENCE_ATTEMPT).integers(2**62)
                      for r, s in zip(refs.tolist(), sides.tolist())], dtype=np.int64)
    return codes.astype(np.float32), seeds


def anchor_renderer(generator: nn.Module, aligner: nn.Module, latents: np.ndarray, normals: np.ndarray,
                    spec: GenerateSpec, device: Any) -> AnchorRenderer:
    def render(references: np.ndarray) -> tuple[torch.Tensor, list[bool]]:
        codes, seeds = anchor_codes(references, latents, normals, spec)
        return render_faces(generator, aligner, codes, seeds, spec, device)

    return render


class IdentityFilter:
    """Similarities of judged faces to their reference images; its `tests()` plug into generate's `accept`."""

    def __init__(self, spec: IdentityFilterSpec, judge: nn.Module, anchors: AnchorRenderer, sides: int = 2) -> None:
        self.spec, self.judge, self.anchors, self.sides = spec, judge, anchors, sides
        self._anchor_embeddings: dict[int, torch.Tensor] = {}
        self._judged: dict[Draw, torch.Tensor] = {}

    def tests(self) -> list[Acceptance]:
        spec, tests = self.spec, []
        if spec.min_reference_similarity is not None:
            tests.append(_Test("reference_similarity", self, 0, lambda s: s >= spec.min_reference_similarity))
        if spec.max_cross_similarity is not None:
            tests.append(_Test("cross_similarity", self, 1, lambda s: s <= spec.max_cross_similarity))
        return tests

    @torch.no_grad()
    def _embed(self, faces: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.judge(faces).float(), dim=1)

    def _anchors_of(self, references: list[int]) -> torch.Tensor:
        """float [len(references), sides, D] embeddings of their reference images (NaN where no face)."""
        for reference in sorted(set(references) - set(self._anchor_embeddings)):  # one at a time: batch-independent
            faces, found = self.anchors(np.array([reference]))
            embeddings = self._embed(faces)
            absent = ~torch.tensor(found, device=embeddings.device)
            embeddings[absent] = float("nan")
            if absent.any():
                log.warning("reference %d: %d of its reference images show no face; the faces of its classes fail "
                            "the identity filter's tests that need them", reference, int(absent.sum()))
            self._anchor_embeddings[reference] = embeddings
        return torch.stack([self._anchor_embeddings[r] for r in references])

    def similarities(self, faces: torch.Tensor, draws: list[Draw]) -> torch.Tensor:
        """float [M, 2]: each face's similarity to its own class's reference image and to the other class's."""
        if any(d not in self._judged for d in draws):
            embeddings = self._embed(faces)
            anchors = self._anchors_of([d.reference for d in draws]).to(embeddings.device)
            own = torch.tensor([d.side for d in draws], device=embeddings.device)
            rows = torch.arange(len(draws), device=embeddings.device)
            to_own = (anchors[rows, own] * embeddings).sum(1)
            to_other = torch.full_like(to_own, float("nan"))
            if self.sides == 2:
                to_other = (anchors[rows, 1 - own] * embeddings).sum(1)
            self._judged = dict(zip(draws, torch.stack([to_own, to_other], 1)))  # the batch the next test asks about
        return torch.stack([self._judged[d] for d in draws])


@dataclass(frozen=True)
class _Test:
    name: str
    owner: IdentityFilter
    column: int
    passes: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, faces: torch.Tensor, draws: list[Draw]) -> torch.Tensor:
        return self.passes(self.owner.similarities(faces, draws)[:, self.column])


def identity_filter_tests(spec: IdentityFilterSpec, judge: nn.Module, generator: nn.Module, aligner: nn.Module,
                          latents: np.ndarray, normals: np.ndarray, generate_spec: GenerateSpec,
                          device: Any) -> list[Acceptance]:
    """The acceptance tests `generate(accept=...)` runs for this filter (none when it is off)."""
    anchors = anchor_renderer(generator, aligner, latents, normals, generate_spec, device)
    return IdentityFilter(spec, judge, anchors, generate_spec.offsets.sides).tests()
