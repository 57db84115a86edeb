"""Nearest gallery vector of every query, and of every class of queries, by chunked matrix products.

Cosine similarity of L2-normalised rows. Memory is bounded by one [query_chunk, gallery_chunk] block of
scores; only the running best score and its gallery index per query are kept, so a 500,000 x 100,000
search never holds the full score matrix (benchmarks/audit.py measures it).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from exfacegan.errors import DataError


class Nearest(NamedTuple):
    score: np.ndarray  # float32 [Q], the best cosine similarity of each query (class)
    index: np.ndarray  # int64 [Q], the gallery row that gave it
    query: np.ndarray  # int64 [Q], the query row that gave it (for classes: which member; else arange)


def nearest(
    queries: torch.Tensor | np.ndarray,
    gallery: torch.Tensor | np.ndarray,
    *,
    query_chunk: int = 4096,
    gallery_chunk: int = 16384,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Nearest:
    """For each query row [Q, D], the gallery row [G, D] of highest dot product and that product.

    Rows are used as given (normalise them for cosines). Products are computed in `dtype` (float16/bfloat16
    halve memory traffic where the device has fast kernels for them) and compared in float32.
    """
    queries, gallery = (torch.as_tensor(x) for x in (queries, gallery))
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1] or not len(gallery):
        raise DataError(f"cannot compare embeddings {tuple(queries.shape)} with a gallery of {tuple(gallery.shape)}: "
                        "need [Q, D] and [G >= 1, D] of the same D (the same embedder)")
    best = torch.full((len(queries),), -torch.inf)
    best_index = torch.zeros(len(queries), dtype=torch.long)
    with torch.inference_mode():
        for q_start in range(0, len(queries), query_chunk):
            block = queries[q_start : q_start + query_chunk].to(device, dtype)
            score = torch.full((len(block),), -torch.inf, device=device)
            index = torch.zeros(len(block), dtype=torch.long, device=device)
            for g_start in range(0, len(gallery), gallery_chunk):
                products = block @ gallery[g_start : g_start + gallery_chunk].to(device, dtype).T
                top, where = products.float().max(dim=1)
                better = top > score
                score = torch.where(better, top, score)
                index = torch.where(better, where + g_start, index)
            best[q_start : q_start + len(block)] = score.cpu()
            best_index[q_start : q_start + len(block)] = index.cpu()
    return Nearest(best.numpy(), best_index.numpy(), np.arange(len(queries), dtype=np.int64))


def best_per_class(found: Nearest, classes: np.ndarray, num_classes: int) -> Nearest:
    """Reduce per-query results to the best one of each class (`classes` [Q] in [0, num_classes)); a class
    without queries gets score -inf and index -1."""
    order = np.lexsort((found.score, classes))  # by class, best last
    last = np.flatnonzero(np.r_[classes[order][1:] != classes[order][:-1], True])
    winners = order[last]
    score = np.full(num_classes, -np.inf, np.float32)
    index = np.full(num_classes, -1, np.int64)
    query = np.full(num_classes, -1, np.int64)
    owner = classes[winners]
    score[owner], index[owner], query[owner] = found.score[winners], found.index[winners], found.query[winners]
    return Nearest(score, index, query)
