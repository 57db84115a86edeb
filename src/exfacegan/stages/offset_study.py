"""The offset study (the paper code's `impact_of_max_off`): how far along its boundary an identity holds.

For each offset magnitude m, reference r gets the codes the generate stage would give it with
`sampling.max_off = m`: draw t (t = 0 .. draws-1, the class's first draws) is u ~ U(min(min_off, m), m)
per dimension from the run's seeded stream `draw_rng(seed, r, stream, t)`, so `w - u ⊙ n` (side "same")
and `w + u ⊙ n` (side "other"). numpy's uniform(low, high) is low + (high - low) * U(0, 1), so the draws of
one (r, t) move along one ray as m grows, and at m = sampling.max_off they are exactly the dataset's draw
t. Each render is aligned and embedded as a saved face (uint8) and compared (cosine) with the reference
image, rendered as the generate stage renders it with `include_reference` (u = 0, attempt -1).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.errors import ConfigError
from exfacegan.gans.latent import synthesize, to_uint8
from exfacegan.stages.generate import GenerateSpec
from exfacegan.stages.offsets import (
    REFERENCE_ATTEMPT,
    SIDES,
    Draw,
    OffsetSpec,
    draw_codes,
    first_draws,
)

NUMBER = r"\s*(\d+(?:\.\d*)?|\.\d+)\s*"
PERCENTILES = (10, 90)


def parse_offsets(text: str, include: float | None = None) -> np.ndarray:
    """`a:b:s` -> a, a+s, ... up to b (inclusive), plus `include` (the run's max_off) where it is missing."""
    match = re.fullmatch(f"{NUMBER}:{NUMBER}:{NUMBER}", text)
    if match is None:
        raise ConfigError(f"--max-off must be start:stop:step with numbers >= 0 (e.g. 0:60:5), got {text!r}")
    start, stop, step = (float(g) for g in match.groups())
    if start > stop or step <= 0:
        raise ConfigError(f"--max-off {text}: need start <= stop and step > 0")
    count = int(np.floor((stop - start) / step + 1e-9)) + 1
    if count > 1000:
        raise ConfigError(f"--max-off {text} gives {count} offsets; at most 1000")
    offsets = np.round(start + step * np.arange(count), 9)
    if include is not None and not np.isclose(offsets, include).any():
        offsets = np.sort(np.append(offsets, include))
    return offsets


def offset_spec(spec: OffsetSpec, magnitude: float, draws: int) -> OffsetSpec:
    """The run's offset settings with max_off = magnitude: `draws` first draws per class, no reference slot."""
    return replace(spec, min_off=min(spec.min_off, magnitude), max_off=float(magnitude), per_class=draws,
                   include_reference=False)


@dataclass
class StudyResult:
    similarity: np.ndarray  # float64 [sides, K, draws, M]; NaN where no face was found
    reference_found: np.ndarray  # bool [K]
    reference_faces: torch.Tensor  # uint8 [S, 3, 112, 112], the first S references
    strip_faces: torch.Tensor  # uint8 [S, sides, M, 3, 112, 112], draw 0


class _Embed:
    """codes -> (uint8 faces, L2-normalised embeddings, found), batched as the generate stage renders."""

    def __init__(self, generator: nn.Module, aligner: nn.Module, embedder: nn.Module, spec: GenerateSpec,
                 device: str | torch.device) -> None:
        self.generator, self.aligner, self.embedder, self.spec, self.device = generator, aligner, embedder, spec, device

    @torch.inference_mode()
    def __call__(self, codes: np.ndarray, seeds: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = []
        for begin in range(0, len(codes), self.spec.batch_size):
            batch = slice(begin, begin + self.spec.batch_size)
            images = synthesize(self.generator, torch.from_numpy(codes[batch]).to(self.device),
                                truncation=self.spec.truncation, noise_mode=self.spec.noise_mode,
                                seeds=torch.from_numpy(seeds[batch]), precision=self.spec.precision)
            faces, found = self.aligner(images)
            faces = to_uint8(faces)
            embeddings = F.normalize(self.embedder(faces).float(), dim=1)
            parts.append((faces.cpu(), embeddings.cpu(), found.bool().cpu()))
        return tuple(torch.cat(column) for column in zip(*parts))


def offset_study(
    generator: nn.Module,
    aligner: nn.Module,
    embedder: nn.Module,
    *,
    reference_latents: np.ndarray,
    normals: np.ndarray,
    references: np.ndarray,
    offsets: np.ndarray,
    spec: GenerateSpec,
    draws: int = 1,
    strip_references: int = 6,
    device: str | torch.device = "cpu",
) -> StudyResult:
    """Similarity of each reference's renders at each offset magnitude to its reference image."""
    embed = _Embed(generator, aligner, embedder, spec, device)
    sides, k = spec.offsets.sides, len(references)
    strips = min(strip_references, k)
    reference_draws = [Draw(2 * r if spec.offsets.both_sides else r, r, 0, 0, REFERENCE_ATTEMPT)
                       for r in references.tolist()]
    codes, seeds = draw_codes(reference_draws, reference_latents, normals, spec.offsets)
    reference_faces, reference_embeddings, reference_found = embed(codes, seeds)
    similarity = np.full((len(offsets), k, sides, draws), np.nan)
    strip_faces = torch.zeros(len(offsets), strips, sides, *reference_faces.shape[1:], dtype=torch.uint8)
    for i, magnitude in enumerate(offsets.tolist()):
        at = offset_spec(spec.offsets, magnitude, draws)
        codes, seeds = draw_codes(first_draws(references, at), reference_latents, normals, at)
        faces, embeddings, found = embed(codes, seeds)
        scores = (embeddings.view(k, sides * draws, -1) @ reference_embeddings[:, :, None]).squeeze(2).double()
        ok = found.view(k, sides * draws) & reference_found[:, None]
        similarity[i] = torch.where(ok, scores, torch.nan).view(k, sides, draws).numpy()
        strip_faces[i] = faces.view(k, sides, draws, *faces.shape[1:])[:strips, :, 0]
    return StudyResult(similarity.transpose(2, 1, 3, 0), reference_found.numpy(), reference_faces[:strips],
                       strip_faces.permute(1, 2, 0, 3, 4, 5))


def curve_summary(similarity: np.ndarray) -> list[dict[str, list[float | None]]]:
    """Per side: mean, 10th and 90th percentile over references and draws, and the number of faces, per offset."""
    summary = []
    for side in similarity:
        flat = side.reshape(-1, side.shape[-1])
        with warnings.catch_warnings():  # an offset where no face was found: NaN, written as null
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, (low, high) = np.nanmean(flat, axis=0), np.nanpercentile(flat, PERCENTILES, axis=0)
        summary.append({"mean": json_values(mean), f"p{PERCENTILES[0]}": json_values(low),
                        f"p{PERCENTILES[1]}": json_values(high), "faces": np.isfinite(flat).sum(0).tolist()})
    return summary


def json_values(values: np.ndarray) -> list:
    """Nested lists of floats for JSON; None where undefined (no face)."""
    return np.where(np.isfinite(values), values.astype(object), None).tolist()


def side_names(spec: OffsetSpec) -> list[str]:
    return list(SIDES[: spec.sides])
