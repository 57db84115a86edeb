import numpy as np
import pytest

from exfacegan.errors import ConfigError, DataError
from exfacegan.label import cosine_similarities, identity_labels
from exfacegan.stages.label import label


def _unit_circle(degrees):
    angles = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def test_median_labels_on_a_handmade_example():
    # Reference 0 at 0 degrees sees cos(10)=.985, cos(25)=.906, cos(90)=0, cos(200)=-.940: sorted, the paper's
    # median of the 4 others is the element at index 4 // 2 = 2, i.e. .906; codes >= .906 are similar.
    embeddings = _unit_circle([0, 10, 25, 90, 200])
    labels, thresholds = identity_labels(embeddings, 2, return_thresholds=True)
    assert labels.dtype == np.int8 and labels.shape == (2, 5)
    np.testing.assert_array_equal(labels[0], [-1, 1, 1, 0, 0])
    assert thresholds[0] == pytest.approx(np.cos(np.deg2rad(25)), abs=1e-6)
    # Reference 1 at 10 degrees: cos(10)=.985 (code 0), cos(15)=.966 (code 2), cos(80)=.174, cos(190)=-.985;
    # sorted [-.985, .174, .966, .985] -> threshold .966: the two neighbours are similar.
    np.testing.assert_array_equal(labels[1], [1, -1, 1, 0, 0])
    assert thresholds[1] == pytest.approx(np.cos(np.deg2rad(15)), abs=1e-6)


def test_codes_outside_the_pool_are_left_out_and_the_median_uses_only_the_pool(tmp_path):
    # Faces found for codes 0, 1, 3, 4, 5 (code 2 has none). Pool of 3 = the first three with a face: 0, 1, 3.
    # Reference 0 (0 deg) sees, in the pool, cos(10)=.985 (code 1) and cos(25)=.906 (code 3): the median of
    # the M = 2 others is sorted[2 // 2] = .985, so code 3 is dissimilar. Over all codes with a face it would be
    # sorted([-.940, 0, .906, .985])[2] = .906 and code 3 similar. Reference 1 (10 deg): cos(10)=.985 (code 0),
    # cos(15)=.966 (code 3) -> threshold .985.
    embeddings = _unit_circle([0, 10, 45, 25, 90, 200])
    found = np.array([True, True, False, True, True, True])
    labels = np.load(label(tmp_path, embeddings, found, num_references=2, pool_size=3).labels)
    np.testing.assert_array_equal(labels["references"], [0, 1])
    np.testing.assert_array_equal(labels["labels"], [[-1, 1, -1, 0, -1, -1], [1, -1, -1, 0, -1, -1]])
    everyone = np.load(label(tmp_path / "all", embeddings, found, num_references=2).labels)["labels"]
    np.testing.assert_array_equal(everyone[0], [-1, 1, -1, 1, 0, 0])
    with pytest.raises(ConfigError, match="pool_size=6 but only 5 of 6 samples have a face"):
        label(tmp_path / "big", embeddings, found, pool_size=6)
    with pytest.raises(ConfigError, match="num_references=4 but only 3 of 6 samples have a face in the pool"):
        label(tmp_path / "refs", embeddings, found, num_references=4, pool_size=3)


def test_median_matches_the_paper_formula_for_even_and_odd_counts():
    rng = np.random.default_rng(0)
    for count in (9, 10):
        embeddings = rng.standard_normal((count, 6)).astype(np.float32)
        labels, thresholds = identity_labels(embeddings, count, return_thresholds=True)
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        for ref in range(count):
            sims = np.delete(unit @ unit[ref], ref)
            expected_threshold = np.sort(sims)[len(sims) // 2]
            assert thresholds[ref] == pytest.approx(expected_threshold, abs=1e-6)
            expected = np.insert((sims >= expected_threshold).astype(np.int8), ref, -1)
            np.testing.assert_array_equal(labels[ref], expected)
            # The paper's median splits the others into a dissimilar half and a similar rest.
            assert (labels[ref] == 0).sum() == (count - 1) // 2


def test_fixed_threshold_and_margin():
    embeddings = _unit_circle([0, 30, 50, 58, 70, 120])
    # cosines to reference 0: .866, .643, .530, .342, -.5
    labels = identity_labels(embeddings, 1, threshold=0.5, margin=0.0)
    np.testing.assert_array_equal(labels[0], [-1, 1, 1, 1, 0, 0])
    labels = identity_labels(embeddings, 1, threshold=0.5, margin=0.2)
    np.testing.assert_array_equal(labels[0], [-1, 1, -1, -1, -1, 0])
    labels = identity_labels(embeddings, 1, threshold="median", margin=0.2)  # median = .530 here
    np.testing.assert_array_equal(labels[0], [-1, 1, -1, -1, -1, 0])


def test_fixed_thresholds_at_the_ends_of_the_cosine_range_are_accepted_and_beyond_them_refused():
    embeddings = _unit_circle([0, 0, 90, 180])  # cosines to code 0: exactly 1, 0 and -1
    np.testing.assert_array_equal(identity_labels(embeddings, 1, threshold=1.0)[0], [-1, 1, 0, 0])
    np.testing.assert_array_equal(identity_labels(embeddings, 1, threshold=-1.0)[0], [-1, 1, 1, 1])
    for beyond in (1.0001, -1.0001, "1.0001"):
        with pytest.raises(ConfigError, match="cosine similarity in \\[-1, 1\\]"):
            identity_labels(embeddings, 1, threshold=beyond)


def test_chunking_reference_arrays_and_scale_do_not_change_labels():
    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((40, 8)).astype(np.float32)
    whole = identity_labels(embeddings, 40, chunk_size=1000)
    np.testing.assert_array_equal(identity_labels(embeddings, 40, chunk_size=3), whole)
    np.testing.assert_array_equal(identity_labels(embeddings * 7.5, 40), whole)
    picked = np.array([5, 0, 39])
    np.testing.assert_array_equal(identity_labels(embeddings, picked, chunk_size=2), whole[picked])


def test_cosine_similarities():
    rng = np.random.default_rng(2)
    embeddings = rng.standard_normal((7, 5))
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    np.testing.assert_allclose(cosine_similarities(embeddings, chunk_size=2), unit @ unit.T, atol=1e-6)
    np.testing.assert_allclose(cosine_similarities(embeddings, 3), (unit @ unit.T)[:3], atol=1e-6)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"threshold": 1.5}, ConfigError, "[-1, 1]"),
    ({"threshold": -1.01}, ConfigError, "[-1, 1]"),
    ({"threshold": "mean"}, ConfigError, "median"),
    ({"margin": -0.1}, ConfigError, "margin"),
    ({"references": 11}, ConfigError, "10 samples"),
    ({"references": np.array([0, 10])}, DataError, "[0, 10)"),
    ({"references": 0}, ConfigError, "between 1 and 10"),
])
def test_bad_input_gives_one_clear_error(kwargs, error, words):
    embeddings = np.random.default_rng(3).standard_normal((10, 4))
    references = kwargs.pop("references", 3)
    with pytest.raises(error) as info:
        identity_labels(embeddings, references, **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_bad_embeddings():
    with pytest.raises(DataError, match="NaN"):
        identity_labels(np.array([[1.0, 0.0], [np.nan, 1.0], [0.0, 1.0]]), 1)
    with pytest.raises(DataError, match="shape"):
        identity_labels(np.ones(5), 1)
    with pytest.raises(DataError, match="zeros"):
        identity_labels(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), 1)
