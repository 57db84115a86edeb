"""Stage 3: one identity boundary per reference, fitted on the latent codes and their labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from exfacegan.boundary import fit_boundaries
from exfacegan.data.artifacts import save_npz
from exfacegan.errors import ConfigError, DataError
from exfacegan.pipeline import ChunkStore
from exfacegan.stages.pose_direction import POSE_DIRECTION_FILE, fit_yaw_direction, pose_shift, save_pose_direction


@dataclass(frozen=True)
class FitArtifacts:
    boundaries: Path  # normals [R, d], intercepts, val_accuracy, train_accuracy, valid, references
    pose_direction: Path | None = None  # the yaw direction (see stages.pose_direction); None without poses


def fit(
    out_dir: Path,
    latents: np.ndarray,
    labels: np.ndarray,
    references: np.ndarray,
    *,
    solver: str = "svm",
    references_per_chunk: int = 1024,
    progress: bool = True,
    pairing: str = "reference",
    poses: np.ndarray | None = None,
    **options: Any,
) -> FitArtifacts:
    """Write `boundaries.npz` into `out_dir`.

    References are fitted `references_per_chunk` at a time and each finished chunk is saved under
    `out_dir/chunks`, so an interrupted call resumes with the next chunk; the result does not depend
    on the chunk size (see `fit_boundaries(rows=...)`).

    `pairing` says which code each boundary will move (`paired_codes`, `reference_latents`): `reference` its
    reference's; `position` code r for boundary r, as the paper code's `create_dataset.py` pairs them (it loads the
    latent named by the boundary's number, which is the reference's position among the images with a face, not
    the image's number), so after the first code without a face boundaries move other codes than their own.

    `poses` (the sample stage's [N, 3] yaw, pitch, roll): with at least two finite yaws, also write
    `pose_direction.npz`, the yaw direction in w orthogonalised per boundary (`stages.pose_direction`).
    """
    paired = paired_codes(references, len(latents), pairing)
    if labels.shape != (len(references), len(latents)):
        raise DataError(
            f"labels have shape {labels.shape}, expected [{len(references)} references, {len(latents)} codes]; "
            "were they computed from these latents?"
        )
    if references_per_chunk < 1:
        raise ConfigError(f"fit.references_per_chunk must be >= 1, got {references_per_chunk}")
    out_dir = Path(out_dir)
    chunks = ChunkStore(out_dir / "chunks")
    count = len(references)
    starts = list(range(0, count, references_per_chunk))
    several = len(starts) > 1
    with tqdm(total=count, desc=f"boundaries ({solver})", unit="ref", disable=not (progress and several)) as bar:
        for start in starts:
            rows = np.arange(start, min(start + references_per_chunk, count))
            if not chunks.done(start):
                result = fit_boundaries(latents, labels, solver, rows=rows, progress=progress and not several,
                                        **options)
                chunks.save(start, **result._asdict())
            bar.update(rows.size)
    result = chunks.concatenate(starts)
    if not result["valid"].any():
        labelled = labels >= 0
        similar = float((labels == 1).sum() / max(labelled.sum(), 1))
        raise DataError(
            f"no reference could be fitted: each needs both similar and dissimilar codes, but {similar:.1%} of "
            "the labelled codes are similar; choose another label.threshold (or a smaller boundary.margin)"
        )
    artifacts = FitArtifacts(out_dir / "boundaries.npz")
    if poses is not None and np.isfinite(poses[:, 0]).sum() >= 2:
        model = fit_yaw_direction(latents, poses[:, 0])
        shift = pose_shift(model, result["normals"], latents[paired], poses[paired, 0])
        artifacts = FitArtifacts(artifacts.boundaries, out_dir / POSE_DIRECTION_FILE)
        save_pose_direction(artifacts.pose_direction, model, shift)
    save_npz(
        artifacts.boundaries,
        normals=result["normals"], intercepts=result["intercepts"], val_accuracy=result["val_accuracy"],
        train_accuracy=result["train_accuracy"], valid=result["valid"], references=references,
        paired_codes=paired, reference_latents=latents[paired],
    )
    chunks.remove()
    return artifacts


PAIRINGS = ("reference", "position")


def paired_codes(references: np.ndarray, num_codes: int, pairing: str = "reference") -> np.ndarray:
    """Index of the code each boundary moves: its reference (`reference`), or code r for boundary r (`position`)."""
    if pairing not in PAIRINGS:
        raise ConfigError(f"fit.pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    references = np.asarray(references, dtype=np.int64)
    if pairing == "reference":
        return references
    if len(references) > num_codes:
        raise DataError(f"fit.pairing=position needs as many codes as references, got {num_codes} < {len(references)}")
    return np.arange(len(references), dtype=np.int64)
