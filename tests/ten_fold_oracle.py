"""insightface's 10-fold verification protocol written out loop by loop, as an oracle for `ten_fold_accuracy`."""

import numpy as np
from sklearn.model_selection import KFold


def insightface_ten_fold(emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray) -> tuple[list[float], list[float]]:
    """Per fold: the accuracy on the held-out fold and the threshold chosen on the other nine.

    Squared L2 distance of the (normalised) embeddings; sklearn's KFold(10) without shuffling; on the nine
    training folds, the first threshold of 0, 0.01, ..., 3.99 that gets the most pairs right (distance below the
    threshold: same identity); that threshold's accuracy on the tenth fold.
    """
    dist = np.sum(np.square(emb1 - emb2), axis=1)
    accuracies, chosen = [], []
    for train, test in KFold(n_splits=10, shuffle=False).split(dist):
        best, most_right = None, -1
        for threshold in np.arange(0, 4, 0.01):
            right = int(np.sum((dist[train] < threshold) == issame[train]))
            if right > most_right:
                best, most_right = threshold, right
        chosen.append(float(best))
        accuracies.append(float(np.mean((dist[test] < best) == issame[test])))
    return accuracies, chosen


def pairs_at_distances(dist: np.ndarray, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings [P, dim] twice whose squared L2 distances are `dist` (each in [0, 4])."""
    rng = np.random.default_rng(seed)
    first = rng.normal(size=(len(dist), dim))
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    other = rng.normal(size=(len(dist), dim))
    other -= np.sum(other * first, axis=1, keepdims=True) * first
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    cosine = 1 - dist / 2
    return first, cosine[:, None] * first + np.sqrt(1 - cosine**2)[:, None] * other
