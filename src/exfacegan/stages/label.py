"""Stage 2: label every code as similar / dissimilar in identity to each reference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exfacegan.data.artifacts import save_npz
from exfacegan.errors import ConfigError
from exfacegan.label import identity_labels


@dataclass(frozen=True)
class LabelArtifacts:
    labels: Path  # labels int8 [R, N] (1 similar, 0 dissimilar, -1 left out), references [R]


def label(
    out_dir: Path,
    embeddings: np.ndarray,
    found: np.ndarray,
    *,
    num_references: int | None = None,
    threshold: str | float = "median",
    margin: float = 0.0,
    chunk_size: int = 1024,
) -> LabelArtifacts:
    """References are the first `num_references` codes whose face was found (all of them by default).

    Codes without a face get label -1 for every reference.
    """
    candidates = np.flatnonzero(found)
    count = len(candidates) if num_references is None else int(num_references)
    if count < 1 or count > len(candidates):
        raise ConfigError(
            f"label.num_references={count} but only {len(candidates)} of {len(found)} samples have a face; "
            "use at most that many references or sample more"
        )
    references = candidates[:count]
    labels = np.full((count, len(found)), -1, dtype=np.int8)
    labels[:, candidates] = identity_labels(
        embeddings[candidates], np.arange(count), threshold=threshold, margin=margin, chunk_size=chunk_size
    )
    artifacts = LabelArtifacts(Path(out_dir) / "labels.npz")
    save_npz(artifacts.labels, labels=labels, references=references)
    return artifacts
