"""Verification scores of a labelled embedding set and the separability metrics computed from them.

Genuine scores: cosine similarity of every same-class pair. Impostor scores: every different-class
pair, or a seeded uniform sample of distinct such pairs when there are more than `max_impostor_pairs`.
With `both_sides`, the pairs of classes 2r and 2r+1 (the two sides of one ExFaceGAN boundary) are
also scored exhaustively as a separate "both-sides" set; they remain impostors for the metrics.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from sklearn.metrics import roc_curve

from exfacegan.errors import DataError

# Elements of one batched similarity block [classes, M, M] (or rows x N): bounds memory to ~64 MB.
BLOCK_ELEMENTS = 1 << 24


class PairScores(NamedTuple):
    genuine: np.ndarray          # float32 [G]
    genuine_class: np.ndarray    # int64 [G], the class label of each genuine pair
    impostor: np.ndarray         # float32 [I]
    impostor_sampled: bool       # True when `impostor` is a sample of all different-class pairs
    both_sides: np.ndarray       # float32 [B], pairs of class 2r with class 2r+1 (empty unless asked)


def pair_scores(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    max_impostor_pairs: int = 1_000_000,
    seed: int = 0,
    both_sides: bool = False,
) -> PairScores:
    """Genuine and impostor cosine similarities of L2-normalised `embeddings` [N, D] with class `labels` [N]."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels).astype(np.int64)
    if embeddings.ndim != 2 or labels.shape != (len(embeddings),):
        raise DataError(f"need embeddings [N, D] and labels [N], got {embeddings.shape} and {labels.shape}")
    if max_impostor_pairs < 1:
        raise DataError(f"max_impostor_pairs must be at least 1, got {max_impostor_pairs}")
    genuine, genuine_class = _genuine_scores(embeddings, labels)
    impostor, sampled = _impostor_scores(embeddings, labels, max_impostor_pairs, np.random.default_rng(seed))
    sides = _both_sides_scores(embeddings, labels, max_impostor_pairs, np.random.default_rng(seed + 1)) if both_sides \
        else np.zeros(0, np.float32)
    return PairScores(genuine, genuine_class, impostor, sampled, sides)


def _class_index(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classes ordered by size, their sizes, and a padded index matrix [C, max size] (-1 = padding)."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_size = np.argsort(counts, kind="stable")
    rank = np.empty_like(by_size)
    rank[by_size] = np.arange(len(by_size))
    order = np.lexsort((np.arange(len(labels)), rank[inverse]))  # samples grouped by class, classes by size
    starts = np.concatenate([[0], np.cumsum(counts[by_size])[:-1]])
    position = np.arange(len(labels)) - np.repeat(starts, counts[by_size])
    index = np.full((len(classes), counts.max(initial=0)), -1, dtype=np.int64)
    index[np.repeat(np.arange(len(classes)), counts[by_size]), position] = order
    return classes[by_size], counts[by_size], index


def _genuine_scores(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes, counts, index = _class_index(labels)
    padded = np.concatenate([embeddings, np.zeros((1, embeddings.shape[1]), np.float32)])
    scores, owners = [], []
    start = 0
    while start < len(classes):
        # Classes are sorted by size: a block holds classes of similar size, so padding stays small.
        stop = start + 1
        width = embeddings.shape[1]
        while stop < len(classes) and (stop - start + 1) * int(counts[stop]) * max(int(counts[stop]), width) <= BLOCK_ELEMENTS:
            stop += 1
        size = int(counts[stop - 1])
        block = index[start:stop, :size]
        vectors = torch.from_numpy(padded[block])                 # [c, M, D]; index -1 is the zero row
        similarity = torch.bmm(vectors, vectors.transpose(1, 2)).numpy()  # [c, M, M]
        valid = block >= 0
        upper = np.triu(np.ones((size, size), bool), k=1)
        mask = valid[:, :, None] & valid[:, None, :] & upper
        scores.append(similarity[mask])
        owners.append(np.repeat(classes[start:stop], mask.sum(axis=(1, 2))))
        start = stop
    if not scores:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(scores).astype(np.float32), np.concatenate(owners)


def _impostor_scores(
    embeddings: np.ndarray, labels: np.ndarray, max_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    n, total = len(labels), impostor_pair_count(labels)
    if total == 0:
        return np.zeros(0, np.float32), False
    if total <= 2 * max_pairs:  # enumerate (and subsample): rejection sampling would stall near `total`
        rows = max(1, BLOCK_ELEMENTS // max(n, 1))
        scores = []
        for begin in range(0, n, rows):
            block = slice(begin, begin + rows)
            similarity = (torch.from_numpy(embeddings[block]) @ torch.from_numpy(embeddings).T).numpy()
            later = np.arange(n)[None, :] > np.arange(begin, min(begin + rows, n))[:, None]
            scores.append(similarity[later & (labels[block, None] != labels[None, :])])
        every = np.concatenate(scores).astype(np.float32)
        if total <= max_pairs:
            return every, False
        return every[np.sort(rng.choice(total, size=max_pairs, replace=False))], True
    first, second = sample_impostor_pairs(labels, max_pairs, rng)
    return _rowwise_dot(embeddings, first, second), True


def impostor_pair_count(labels: np.ndarray) -> int:
    """The number of unordered pairs of different-class samples."""
    _, counts = np.unique(labels, return_counts=True)
    return (len(labels) ** 2 - int((counts.astype(np.int64) ** 2).sum())) // 2


def sample_impostor_pairs(labels: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` distinct unordered pairs (first < second) of different-class samples, uniformly at random
    and in sorted order; all of them when there are no more."""
    labels = np.asarray(labels)
    n, total = len(labels), impostor_pair_count(labels)
    if total <= 2 * count:  # enumerate: rejection sampling would stall near `total`
        first, second = np.triu_indices(n, k=1)
        differ = labels[first] != labels[second]
        first, second = first[differ], second[differ]
        if total <= count:
            return first, second
        chosen = np.sort(rng.choice(total, size=count, replace=False))
        return first[chosen], second[chosen]
    keys = np.zeros(0, np.int64)
    while len(keys) < count:
        draw = 2 * (count - len(keys)) + 1024
        a, b = rng.integers(n, size=draw), rng.integers(n, size=draw)
        keep = labels[a] != labels[b]
        low, high = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
        keys = np.sort(np.concatenate([keys, low * n + high]))
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
    keys = np.sort(rng.permutation(keys)[:count])  # sorted: the gathers then walk the embeddings in order
    return keys // n, keys % n


def _both_sides_scores(embeddings: np.ndarray, labels: np.ndarray, max_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Every pair of an image of class 2r with one of class 2r+1 (a seeded sample beyond `max_pairs`)."""
    classes, _, index = _class_index(labels)
    row_of = {int(cls): row for row, cls in enumerate(classes.tolist())}
    pairs = np.array([(row, row_of[cls + 1]) for cls, row in row_of.items() if cls % 2 == 0 and cls + 1 in row_of],
                     dtype=np.int64).reshape(-1, 2)
    padded = torch.from_numpy(np.concatenate([embeddings, np.zeros((1, embeddings.shape[1]), np.float32)]))
    size = index.shape[1]
    per_block = max(1, BLOCK_ELEMENTS // (size * max(size, embeddings.shape[1])))
    scores = []
    for begin in range(0, len(pairs), per_block):
        mine, theirs = index[pairs[begin : begin + per_block, 0]], index[pairs[begin : begin + per_block, 1]]
        similarity = torch.bmm(padded[torch.from_numpy(mine)], padded[torch.from_numpy(theirs)].transpose(1, 2)).numpy()
        scores.append(similarity[(mine >= 0)[:, :, None] & (theirs >= 0)[:, None, :]])
    scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    if len(scores) > max_pairs:
        scores = scores[np.sort(rng.choice(len(scores), size=max_pairs, replace=False))]
    return scores.astype(np.float32)


def _rowwise_dot(embeddings: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    rows = max(1, BLOCK_ELEMENTS // embeddings.shape[1])
    vectors = torch.from_numpy(embeddings)
    first, second = torch.from_numpy(first), torch.from_numpy(second)
    return torch.cat([
        torch.einsum("ij,ij->i", vectors[first[i : i + rows]], vectors[second[i : i + rows]])
        for i in range(0, len(first), rows)
    ] or [torch.zeros(0)]).numpy()


def verification_metrics(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, float]:
    """EER, FMR100/FMR1000 (FNMR at FMR 1% / 0.1%), FDR, d' and the score moments (std with ddof=0).

    The ROC comes from scikit-learn's `roc_curve` (every threshold kept). The EER is the mean of
    FMR and FNMR at the threshold where they are closest; FMRx is the lowest FNMR among thresholds
    whose FMR does not exceed 1/x.
    """
    genuine = np.asarray(genuine, dtype=np.float64).ravel()
    impostor = np.asarray(impostor, dtype=np.float64).ravel()
    if len(genuine) == 0 or len(impostor) == 0:
        raise DataError(
            f"need genuine and impostor scores, got {len(genuine)} and {len(impostor)}; "
            "a dataset needs at least two identities and one identity with two images"
        )
    truth = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    fmr, tpr, thresholds = roc_curve(truth, np.concatenate([genuine, impostor]), drop_intermediate=False)
    fnmr = 1.0 - tpr
    at_eer = int(np.argmin(np.abs(fnmr - fmr)))
    mu_g, mu_i = genuine.mean(), impostor.mean()
    var_g, var_i = genuine.var(), impostor.var()
    spread = var_g + var_i
    return {
        "eer": float((fmr[at_eer] + fnmr[at_eer]) / 2),
        "eer_threshold": float(min(thresholds[at_eer], 1.0)),
        "fmr100": float(fnmr[fmr <= 1e-2].min()),
        "fmr1000": float(fnmr[fmr <= 1e-3].min()),
        "fdr": float((mu_g - mu_i) ** 2 / spread) if spread > 0 else float("inf"),
        "d_prime": float(abs(mu_g - mu_i) / np.sqrt(spread / 2)) if spread > 0 else float("inf"),
        "genuine_mean": float(mu_g),
        "genuine_std": float(np.sqrt(var_g)),
        "impostor_mean": float(mu_i),
        "impostor_std": float(np.sqrt(var_i)),
        "genuine_pairs": int(len(genuine)),
        "impostor_pairs": int(len(impostor)),
    }


def per_class_means(scores: np.ndarray, classes: np.ndarray) -> dict[int, float]:
    """Mean genuine score of each class that has at least one pair."""
    names, inverse = np.unique(classes, return_inverse=True)
    sums = np.bincount(inverse, weights=scores.astype(np.float64), minlength=len(names))
    counts = np.bincount(inverse, minlength=len(names))
    return {int(name): float(total / count) for name, total, count in zip(names, sums, counts)}
