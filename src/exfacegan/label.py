"""Identity labels: which codes look like the same person as each reference, in one chunked N x N pass.

For reference r, every *other* code i gets the cosine similarity s_ri of the L2-normalised embeddings.
With `threshold='median'` (the paper) the threshold t_r is the paper code's median of the other codes'
similarities, `sorted(s_r)[M // 2]` over the M = N - 1 other codes; a float in [-1, 1] is used as is.
Label 1 (similar) when s_ri >= t_r, 0 (dissimilar) when s_ri < t_r, -1 (left out) for the reference
itself and for codes with |s_ri - t_r| < margin. Nothing per reference is written anywhere; memory is
bounded by `chunk_size` rows of similarities at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, overload

import numpy as np
import torch

from exfacegan.errors import ConfigError, DataError

Threshold = str | float

__all__ = ["cosine_similarities", "distinct_references", "identity_labels", "reference_indices"]


def reference_indices(references: int | Sequence[int] | np.ndarray, num_samples: int) -> np.ndarray:
    """`references` as an index array: an int R means the first R codes."""
    if isinstance(references, (int, np.integer)):
        count = int(references)
        if count < 1 or count > num_samples:
            raise ConfigError(
                f"asked for {count} references but there are {num_samples} samples; use between 1 and {num_samples}"
            )
        return np.arange(count)
    indices = np.asarray(references)
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
        raise DataError(
            f"references must be an int or a non-empty 1-D integer array, got {indices.dtype} {indices.shape}"
        )
    if indices.size > num_samples:
        raise ConfigError(f"{indices.size} references but only {num_samples} samples; use at most {num_samples}")
    if indices.min() < 0 or indices.max() >= num_samples:
        raise DataError(f"reference indices must lie in [0, {num_samples}), got {indices.min()}..{indices.max()}")
    return indices.astype(np.int64)


def _normalised(embeddings: np.ndarray | torch.Tensor, device: str | torch.device) -> torch.Tensor:
    values = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings)
    if values.ndim != 2 or values.shape[0] < 2 or values.shape[1] < 1:
        raise DataError(f"embeddings must be a [N >= 2, D] array, got shape {tuple(values.shape)}")
    values = values.to(device=device, dtype=torch.float32)
    if not torch.isfinite(values).all():
        raise DataError("embeddings contain NaN or infinite values; check the embedder's output")
    norms = values.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise DataError(f"{int((norms == 0).sum())} embeddings are all zeros and have no direction; drop those samples")
    return values / norms


def _similarity_chunks(
    unit: torch.Tensor, references: np.ndarray, chunk_size: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    index = torch.as_tensor(references, device=unit.device)
    for start in range(0, len(references), chunk_size):
        rows = slice(start, min(start + chunk_size, len(references)))
        yield rows, unit[index[rows]] @ unit.T


def cosine_similarities(
    embeddings: np.ndarray | torch.Tensor,
    references: int | Sequence[int] | np.ndarray | None = None,
    chunk_size: int = 1024,
    *,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Cosine similarity float32 [R, N] of every code to each reference (all N codes when references is None)."""
    unit = _normalised(embeddings, device)
    indices = np.arange(len(unit)) if references is None else reference_indices(references, len(unit))
    out = np.empty((len(indices), len(unit)), dtype=np.float32)
    for rows, block in _similarity_chunks(unit, indices, chunk_size):
        out[rows] = block.cpu().numpy()
    return out


@overload
def identity_labels(
    embeddings: np.ndarray | torch.Tensor, references: int | Sequence[int] | np.ndarray,
    threshold: Threshold = ..., margin: float = ..., chunk_size: int = ..., *,
    device: str | torch.device = ..., return_thresholds: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def identity_labels(
    embeddings: np.ndarray | torch.Tensor, references: int | Sequence[int] | np.ndarray,
    threshold: Threshold = ..., margin: float = ..., chunk_size: int = ..., *,
    device: str | torch.device = ..., return_thresholds: Literal[True],
) -> tuple[np.ndarray, np.ndarray]: ...
def identity_labels(
    embeddings: np.ndarray | torch.Tensor,
    references: int | Sequence[int] | np.ndarray,
    threshold: Threshold = "median",
    margin: float = 0.0,
    chunk_size: int = 1024,
    *,
    device: str | torch.device = "cpu",
    return_thresholds: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """int8 [R, N] labels (1 similar, 0 dissimilar, -1 left out).

    With `return_thresholds`, also the float32 [R] threshold each reference's codes were compared with.
    """
    median = _parse_threshold(threshold)
    if not np.isfinite(margin) or margin < 0:
        raise ConfigError(f"margin must be a finite number >= 0, got {margin}")
    unit = _normalised(embeddings, device)
    indices = reference_indices(references, len(unit))
    num_samples = len(unit)
    labels = np.empty((len(indices), num_samples), dtype=np.int8)
    thresholds = np.empty(len(indices), dtype=np.float32)
    index = torch.as_tensor(indices, device=unit.device)
    for rows, sims in _similarity_chunks(unit, indices, chunk_size):
        own = index[rows].unsqueeze(1)
        if median is None:
            # The paper's median: sorted(similarities of the M = N - 1 other codes)[M // 2]; the reference's own
            # entry is set to +inf so that it sorts last and is never picked.
            sims.scatter_(1, own, float("inf"))
            level = sims.kthvalue((num_samples - 1) // 2 + 1, dim=1).values
        else:
            level = torch.full((sims.shape[0],), median, device=sims.device)
        block = (sims >= level[:, None]).to(torch.int8)
        if margin > 0:
            block[(sims - level[:, None]).abs() < margin] = -1
        block.scatter_(1, own, -1)
        labels[rows] = block.cpu().numpy()
        thresholds[rows] = level.cpu().numpy()
    return (labels, thresholds) if return_thresholds else labels


def distinct_references(
    embeddings: np.ndarray | torch.Tensor,
    max_similarity: float,
    count: int | None = None,
    chunk_size: int = 1024,
    *,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Positions of references chosen greedily in order: a code is accepted when its cosine similarity to every
    code accepted before it is below `max_similarity`, until `count` are accepted (all that can be when None).

    Codes are compared with the accepted ones a chunk at a time (one [chunk, accepted] product), and within a
    chunk with each other; refused in one line when fewer than `count` can be accepted.
    """
    unit = _normalised(embeddings, device)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    wanted = len(unit) if count is None else count
    accepted: list[int] = []
    kept = unit[:0]
    for start in range(0, len(unit), chunk_size):
        block = unit[start : start + chunk_size]
        free = (block @ kept.T).amax(1) < max_similarity if len(kept) else torch.ones(len(block), dtype=torch.bool)
        free, inner = free.cpu().numpy(), (block @ block.T < max_similarity).cpu().numpy()
        chosen = []
        for i in range(len(block)):
            if free[i] and len(accepted) + len(chosen) < wanted:
                chosen.append(i)
                free &= inner[i]
        accepted += [start + i for i in chosen]
        kept = torch.cat([kept, block[chosen]])
        if len(accepted) == wanted:
            break
    if count is not None and len(accepted) < count:
        raise ConfigError(
            f"references.max_similarity={max_similarity} accepts only {len(accepted)} of {len(unit)} codes as "
            f"references, fewer than label.num_references={count}; raise the bound, ask for fewer references or "
            "sample more codes"
        )
    return np.asarray(accepted, dtype=np.int64)


def _parse_threshold(threshold: Threshold) -> float | None:
    """None for the per-reference median, else the fixed similarity threshold."""
    if isinstance(threshold, str):
        if threshold == "median":
            return None
        try:
            threshold = float(threshold)
        except ValueError:
            raise ConfigError(
                f"threshold must be 'median' or a cosine similarity in [-1, 1], got {threshold!r}"
            ) from None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise ConfigError(f"threshold must be 'median' or a cosine similarity in [-1, 1], got {threshold!r}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"threshold must be 'median' or a cosine similarity in [-1, 1], got {threshold}")
    return float(threshold)
