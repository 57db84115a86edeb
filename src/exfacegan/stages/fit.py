"""Stage 3: one identity boundary per reference, fitted on the latent codes and their labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exfacegan.boundary import fit_boundaries
from exfacegan.data.artifacts import save_npz
from exfacegan.errors import DataError


@dataclass(frozen=True)
class FitArtifacts:
    boundaries: Path  # normals [R, d], intercepts, val_accuracy, train_accuracy, valid, references


def fit(
    out_dir: Path,
    latents: np.ndarray,
    labels: np.ndarray,
    references: np.ndarray,
    *,
    solver: str = "svm",
    **options: Any,
) -> FitArtifacts:
    if labels.shape != (len(references), len(latents)):
        raise DataError(
            f"labels have shape {labels.shape}, expected [{len(references)} references, {len(latents)} codes]; "
            "were they computed from these latents?"
        )
    result = fit_boundaries(latents, labels, solver=solver, **options)
    artifacts = FitArtifacts(Path(out_dir) / "boundaries.npz")
    save_npz(
        artifacts.boundaries,
        normals=result.normals, intercepts=result.intercepts, val_accuracy=result.val_accuracy,
        train_accuracy=result.train_accuracy, valid=result.valid, references=references,
        reference_latents=latents[references],
    )
    return artifacts
