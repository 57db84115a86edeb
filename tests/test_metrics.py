import numpy as np
import pytest
from sklearn.metrics import det_curve, roc_curve

from exfacegan.errors import DataError
from exfacegan.metrics.verification import pair_scores, per_class_means, verification_metrics


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _all_pairs(embeddings: np.ndarray, labels: np.ndarray):
    first, second = np.triu_indices(len(labels), k=1)
    scores = (embeddings @ embeddings.T)[first, second]
    return scores, labels[first], labels[second]


def _all_members(values: np.ndarray, pool: np.ndarray, tol: float = 1e-6) -> bool:
    """Whether every value is within `tol` of some element of the sorted `pool`."""
    right = np.clip(np.searchsorted(pool, values), 0, len(pool) - 1)
    left = np.clip(right - 1, 0, len(pool) - 1)
    return bool(np.all(np.minimum(np.abs(pool[left] - values), np.abs(pool[right] - values)) <= tol))


@pytest.fixture
def labelled():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 14, size=160)  # classes of uneven size
    labels[:3] = 20                          # and one tiny class
    centres = _unit(rng, 21, 24)
    embeddings = centres[labels] + 0.6 * rng.normal(size=(160, 24)).astype(np.float32)
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True), labels


def test_pair_scores_cover_every_pair_exactly_once(labelled):
    embeddings, labels = labelled
    scores, a, b = _all_pairs(embeddings, labels)
    result = pair_scores(embeddings, labels, both_sides=True)
    same = a == b
    np.testing.assert_allclose(np.sort(result.genuine), np.sort(scores[same]), atol=1e-5)
    np.testing.assert_allclose(np.sort(result.impostor), np.sort(scores[~same]), atol=1e-5)
    assert not result.impostor_sampled
    for cls in np.unique(labels):  # each genuine score is attributed to its class
        np.testing.assert_allclose(np.sort(result.genuine[result.genuine_class == cls]),
                                   np.sort(scores[same & (a == cls)]), atol=1e-5)
    siblings = (~same) & (a // 2 == b // 2)
    np.testing.assert_allclose(np.sort(result.both_sides), np.sort(scores[siblings]), atol=1e-5)


def test_both_sides_off_by_default(labelled):
    assert len(pair_scores(*labelled).both_sides) == 0


def test_impostor_sample_is_seeded_distinct_and_different_class(labelled):
    embeddings, labels = labelled
    scores, a, b = _all_pairs(embeddings, labels)
    first = pair_scores(embeddings, labels, max_impostor_pairs=500, seed=7)
    again = pair_scores(embeddings, labels, max_impostor_pairs=500, seed=7)
    other = pair_scores(embeddings, labels, max_impostor_pairs=500, seed=8)
    assert first.impostor_sampled and len(first.impostor) == 500
    np.testing.assert_array_equal(first.impostor, again.impostor)
    assert not np.array_equal(first.impostor, other.impostor)
    impostors = np.sort(scores[a != b])
    assert _all_members(first.impostor, impostors)  # every sampled score is that of an impostor pair
    assert not _all_members(first.impostor, np.sort(scores[a == b]))
    assert len(np.unique(first.impostor)) == 500  # distinct pairs (the scores are continuous)


def test_impostor_sample_close_to_all_pairs_is_an_exact_subset(labelled):
    embeddings, labels = labelled
    scores, a, b = _all_pairs(embeddings, labels)
    impostors = np.sort(scores[a != b])
    result = pair_scores(embeddings, labels, max_impostor_pairs=len(impostors) - 100, seed=1)
    assert result.impostor_sampled and len(result.impostor) == len(impostors) - 100
    again = pair_scores(embeddings, labels, max_impostor_pairs=len(impostors) - 100, seed=1)
    np.testing.assert_array_equal(result.impostor, again.impostor)
    assert _all_members(result.impostor, impostors)


def test_pair_scores_rejects_bad_shapes():
    with pytest.raises(DataError):
        pair_scores(np.zeros((4, 3), np.float32), np.zeros(5))


def test_metrics_match_scikit_learn_and_moment_formulas():
    rng = np.random.default_rng(0)
    genuine = rng.normal(0.6, 0.12, size=3000)
    impostor = rng.normal(0.1, 0.1, size=20000)
    metrics = verification_metrics(genuine, impostor)

    truth = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    scores = np.r_[genuine, impostor]
    fpr, fnr, _ = det_curve(truth, scores)
    crossing = np.argmin(np.abs(fnr - fpr))
    assert metrics["eer"] == pytest.approx((fpr[crossing] + fnr[crossing]) / 2, abs=2e-4)
    fpr_roc, tpr_roc, _ = roc_curve(truth, scores)
    assert metrics["fmr100"] == pytest.approx(np.interp(0.01, fpr_roc, 1 - tpr_roc), abs=2e-3)
    assert metrics["fmr1000"] == pytest.approx(np.interp(0.001, fpr_roc, 1 - tpr_roc), abs=5e-3)
    mu_g, mu_i, var_g, var_i = genuine.mean(), impostor.mean(), genuine.var(), impostor.var()
    assert metrics["fdr"] == pytest.approx((mu_g - mu_i) ** 2 / (var_g + var_i))
    assert metrics["d_prime"] == pytest.approx(abs(mu_g - mu_i) / np.sqrt((var_g + var_i) / 2))
    assert metrics["genuine_std"] == pytest.approx(genuine.std())
    # At the EER threshold the two error rates agree.
    t = metrics["eer_threshold"]
    assert (genuine < t).mean() == pytest.approx((impostor >= t).mean(), abs=1e-3)


def test_metrics_hand_computed_example():
    genuine = np.array([0.9, 0.7, 0.5])
    impostor = np.array([0.6, 0.2, 0.1, 0.0])
    metrics = verification_metrics(genuine, impostor)
    # Accepting scores >= 0.6: FNMR 1/3 (0.5 rejected), FMR 1/4 (0.6 accepted); >= 0.7: 1/3 and 0;
    # |FNMR - FMR| is smallest (1/12) at 0.6, so EER = (1/3 + 1/4) / 2.
    assert metrics["eer"] == pytest.approx(7 / 24)
    assert metrics["eer_threshold"] == pytest.approx(0.6)
    # No impostor above 0.6: FMR 0 reachable with FNMR 1/3 (threshold 0.7).
    assert metrics["fmr100"] == pytest.approx(1 / 3)
    assert metrics["fmr1000"] == pytest.approx(1 / 3)
    # muG = 0.7, muI = 0.225, varG = 0.08/3, varI = 0.226875/4... written out:
    var_g = ((0.2**2) + 0 + (0.2**2)) / 3
    var_i = ((0.375**2) + (0.025**2) + (0.125**2) + (0.225**2)) / 4
    assert metrics["fdr"] == pytest.approx(0.475**2 / (var_g + var_i))
    assert metrics["d_prime"] == pytest.approx(0.475 / np.sqrt((var_g + var_i) / 2))
    assert metrics["genuine_pairs"] == 3 and metrics["impostor_pairs"] == 4


def test_perfect_separation_has_zero_error():
    metrics = verification_metrics(np.array([0.8, 0.9, 0.95]), np.array([0.1, 0.2, -0.3, 0.0]))
    assert metrics["eer"] == 0.0 and metrics["fmr100"] == 0.0 and metrics["fmr1000"] == 0.0
    assert 0.2 < metrics["eer_threshold"] <= 0.8


def test_metrics_need_both_distributions():
    with pytest.raises(DataError):
        verification_metrics(np.array([]), np.array([0.1]))


def test_per_class_means():
    means = per_class_means(np.array([1.0, 0.5, 0.2, 0.4]), np.array([3, 3, 7, 7]))
    assert means == {3: pytest.approx(0.75), 7: pytest.approx(0.3)}


@pytest.mark.parametrize("count", [5, 20, 10_000])  # the sampled, the enumerated-and-subsampled and the whole set
def test_impostor_pairs_are_distinct_different_class_pairs(count):
    from itertools import combinations

    from exfacegan.metrics.verification import sample_impostor_pairs

    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    every = {(i, j) for i, j in combinations(range(len(labels)), 2) if labels[i] != labels[j]}  # 31 pairs
    first, second = sample_impostor_pairs(labels, count, np.random.default_rng(0))
    pairs = list(zip(first.tolist(), second.tolist()))
    assert len(pairs) == min(count, len(every)) == len(set(pairs))
    assert set(pairs) <= every and pairs == sorted(pairs)
    again = sample_impostor_pairs(labels, count, np.random.default_rng(0))
    np.testing.assert_array_equal(again[0], first)
