"""Stage 2: label every code as similar / dissimilar in identity to each reference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from exfacegan.data.artifacts import save_json, save_npz
from exfacegan.errors import ConfigError
from exfacegan.label import distinct_references, identity_labels


@dataclass(frozen=True)
class LabelArtifacts:
    labels: Path  # labels int8 [R, N] (1 similar, 0 dissimilar, -1 left out), references [R]


def label(
    out_dir: Path,
    embeddings: np.ndarray,
    found: np.ndarray,
    *,
    num_references: int | None = None,
    pool_size: int | None = None,
    threshold: str | float = "median",
    margin: float = 0.0,
    chunk_size: int = 1024,
    max_similarity: float | None = None,
    real_similarity: np.ndarray | None = None,
    max_real_similarity: float | None = None,
    device: str | torch.device = "cpu",
) -> LabelArtifacts:
    """Each reference is labelled against a pool: the first `pool_size` codes whose face was found (all of them
    by default; the paper code: 5,000, so each of its 5,000 references is compared with the other 4,999).
    References are the first `num_references` codes of the pool (the whole pool by default); with
    `max_similarity` (references.max_similarity), the first that many chosen greedily in seed order from the
    pool, each less similar than the bound to every reference chosen before it (`distinct_references`, on
    `device`). The median threshold is taken over the other pooled codes. Codes outside the pool or without a
    face get label -1.

    With `max_real_similarity` (references.max_real_similarity), a pooled code whose `real_similarity` [N] (its
    nearest real identity's cosine, exfacegan.data.gallery) is above the bound is no reference; it still labels.
    How many were left out is written to `stats.json`.
    """
    candidates = np.flatnonzero(found)
    pool = candidates[:_count("label.pool_size", pool_size, candidates, len(found))]
    allowed = np.arange(len(pool))
    if max_real_similarity is not None:
        allowed = allowed[real_similarity[pool] <= max_real_similarity]
        if not len(allowed):
            raise ConfigError(f"references.max_real_similarity={max_real_similarity} leaves no code of the pool as a "
                              "reference: every one is closer to a real identity; raise the bound")
    if max_similarity is None:
        positions = allowed[:_count("label.num_references", num_references, allowed, len(found))]
    else:
        positions = allowed[distinct_references(embeddings[pool][allowed], max_similarity, num_references,
                                                chunk_size, device=device)]
    references = pool[positions]
    labels = np.full((len(positions), len(found)), -1, dtype=np.int8)
    labels[:, pool] = identity_labels(
        embeddings[pool], positions, threshold=threshold, margin=margin, chunk_size=chunk_size
    )
    artifacts = LabelArtifacts(Path(out_dir) / "labels.npz")
    save_npz(artifacts.labels, labels=labels, references=references)
    if max_real_similarity is not None:
        save_json(Path(out_dir) / "stats.json", {
            "max_real_similarity": max_real_similarity, "references_left_out_real": int(len(pool) - len(allowed)),
            "references_nearest_real_max": float(real_similarity[references].max())})
    return artifacts


def _count(key: str, value: int | None, available: np.ndarray, num_samples: int) -> int:
    """`value` codes out of `available` (all of them when None), refused when there are not that many."""
    count = len(available) if value is None else int(value)
    if count < 1 or count > len(available):
        raise ConfigError(
            f"{key}={count} but only {len(available)} of {num_samples} samples have a face"
            f"{' in the pool' if key == 'label.num_references' else ''}; use at most that many or sample more"
        )
    return count
