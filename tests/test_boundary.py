import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import MinMaxScaler
from sklearn.svm import LinearSVC

from exfacegan.boundary import IdentityBoundaries, fit_boundaries
from exfacegan.boundary.preprocess import FitData, assign_roles, prepare
from exfacegan.errors import ConfigError, DataError
from exfacegan.label import identity_labels

SEED = 3


def _problem(count=300, dim=16, references=8, seed=0):
    """Skewed, anisotropic latents (like a mapping network's w) and identity labels from a nonlinear embedder."""
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((count, dim)) @ rng.standard_normal((dim, dim)) / np.sqrt(dim)
    latents = (np.where(hidden > 0, hidden, 0.2 * hidden) * np.linspace(0.5, 3.0, dim) + 0.3).astype(np.float32)
    embeddings = np.tanh(latents @ rng.standard_normal((dim, 6))) + 0.4 * rng.standard_normal((count, 6))
    return latents, identity_labels(embeddings, references)


def _split(labels, row, seed=SEED, val_fraction=0.3):
    """The documented preprocessing, written out: one shared random order of the labelled codes; the first
    k = min(#similar, #dissimilar) of each class are kept, the first int(k * 0.7) of those train."""
    used = np.flatnonzero((labels >= 0).any(axis=0))
    order = used[np.random.default_rng(seed).permutation(used.size)]
    similar, dissimilar = order[labels[row, order] == 1], order[labels[row, order] == 0]
    kept = min(similar.size, dissimilar.size)
    cut = int(kept * (1 - val_fraction))
    train = np.concatenate([similar[:cut], dissimilar[:cut]])
    val = np.concatenate([similar[cut:kept], dissimilar[cut:kept]])
    return train, val


def _scaled(latents, labels):
    used = np.flatnonzero((labels >= 0).any(axis=0))
    return MinMaxScaler(feature_range=(-1, 1)).fit(latents[used]).transform(latents)


def _dissimilar(labels, row, index):
    return (labels[row, index] == 0).astype(int)


@pytest.fixture(scope="module")
def problem():
    return _problem()


@pytest.fixture(scope="module")
def svm_result(problem):
    latents, labels = problem
    return fit_boundaries(latents, labels, "svm", seed=SEED, n_jobs=1, progress=False)


def test_svm_equals_a_direct_linearsvc_fit_and_points_to_the_dissimilar_side(problem, svm_result):
    latents, labels = problem
    scaled = _scaled(latents, labels)
    assert isinstance(svm_result, IdentityBoundaries) and svm_result.valid.all()
    assert svm_result.normals.dtype == np.float32 and svm_result.normals.shape == (8, 16)
    np.testing.assert_allclose(np.linalg.norm(svm_result.normals, axis=1), 1.0, atol=1e-6)
    for row in range(len(labels)):
        train, val = _split(labels, row)
        direct = LinearSVC(dual=False, C=1.0).fit(scaled[train], _dissimilar(labels, row, train))
        normal = direct.coef_.ravel() / np.linalg.norm(direct.coef_)
        assert normal @ svm_result.normals[row] > 0.99999
        intercept = direct.intercept_[0] / np.linalg.norm(direct.coef_)
        assert svm_result.intercepts[row] == pytest.approx(intercept, abs=1e-3)
        accuracy = (direct.predict(scaled[val]) == _dissimilar(labels, row, val)).mean()
        assert svm_result.val_accuracy[row] == pytest.approx(accuracy, abs=1e-6)
        # The normal points from the similar codes towards the dissimilar ones: w - u*n keeps the identity.
        gap = scaled[labels[row] == 0].mean(axis=0) - scaled[labels[row] == 1].mean(axis=0)
        assert gap @ svm_result.normals[row] > 0


@pytest.mark.parametrize("solver", ["batched", "logistic"])
def test_batched_solvers_agree_with_liblinear(problem, svm_result, solver):
    latents, labels = problem
    result = fit_boundaries(latents, labels, solver, seed=SEED, progress=False)
    assert result.valid.all() and np.isfinite(result.normals).all()
    if solver == "batched":
        reference = svm_result
    else:
        scaled = _scaled(latents, labels)
        normals, accuracies = [], []
        for row in range(len(labels)):
            train, val = _split(labels, row)
            fitted = LogisticRegression(solver="liblinear", C=1.0, tol=1e-8).fit(
                scaled[train], _dissimilar(labels, row, train))
            normals.append(fitted.coef_.ravel() / np.linalg.norm(fitted.coef_))
            accuracies.append((fitted.predict(scaled[val]) == _dissimilar(labels, row, val)).mean())
        reference = IdentityBoundaries(np.array(normals), None, np.array(accuracies), None, None)
    cosines = (result.normals * reference.normals).sum(axis=1)
    assert cosines.min() > 0.999
    num_val = _split(labels, 0)[1].size
    assert np.abs(result.val_accuracy - reference.val_accuracy).max() <= 1.01 / num_val


@pytest.mark.parametrize("solver", ["batched", "ridge"])
def test_chunk_size_does_not_change_the_result(problem, solver):
    latents, labels = problem
    results = [fit_boundaries(latents, labels, solver, chunk_size=size, progress=False) for size in (None, 3, 1)]
    for other in results[1:]:
        np.testing.assert_allclose(other.normals, results[0].normals, atol=2e-5)
        np.testing.assert_allclose(other.val_accuracy, results[0].val_accuracy)


@pytest.mark.parametrize("solver", ["svm", "batched", "ridge", "logistic"])
def test_left_out_codes_do_not_matter(problem, solver):
    latents, labels = problem
    labels = labels[:2].copy()
    left_out = np.array([3, 50, 120])
    labels[:, left_out] = -1
    moved = latents.copy()
    moved[left_out] = moved[left_out] * 50 + 7  # would change the scaling and any fit that used them
    before = fit_boundaries(latents, labels, solver, n_jobs=1, progress=False)
    after = fit_boundaries(moved, labels, solver, n_jobs=1, progress=False)
    np.testing.assert_array_equal(after.normals, before.normals)
    np.testing.assert_array_equal(after.val_accuracy, before.val_accuracy)


@pytest.mark.parametrize("solver", ["svm", "batched", "ridge", "logistic"])
def test_degenerate_references_are_skipped_never_nan(problem, solver):
    latents, labels = problem
    labels = labels[:3].copy()
    labels[1, labels[1] == 0] = 1  # all similar
    dissimilar = np.flatnonzero(labels[2] == 0)
    labels[2, dissimilar[1:]] = 1  # a single dissimilar code: nothing left to validate or train on
    with pytest.warns(UserWarning, match="2 of 3 references have no boundary"):
        result = fit_boundaries(latents, labels, solver, n_jobs=1, progress=False)
    np.testing.assert_array_equal(result.valid, [True, False, False])
    for field in result:
        assert np.isfinite(field).all()
    assert not result.normals[1:].any()
    with pytest.raises(DataError, match="2 of 3 references cannot be fit"):
        fit_boundaries(latents, labels, solver, on_degenerate="raise", progress=False)


@pytest.mark.parametrize("solver", ["batched", "ridge"])
def test_original_space_gives_the_same_decision_values(problem, solver):
    latents, labels = problem
    scaled_fit = fit_boundaries(latents, labels, solver, space="scaled", progress=False)
    original_fit = fit_boundaries(latents, labels, solver, space="original", progress=False)
    in_scaled = _scaled(latents, labels) @ scaled_fit.normals.T + scaled_fit.intercepts
    in_original = latents.astype(np.float64) @ original_fit.normals.T + original_fit.intercepts
    # Both are the same classifier's decision value, each divided by its own (positive) normal length.
    # (float32 normals: compare the values, not their ratios, which blow up near the boundary)
    ratio = np.median(in_original / in_scaled, axis=0)
    assert (ratio > 0).all()
    np.testing.assert_allclose(in_original, in_scaled * ratio, rtol=1e-3, atol=1e-4 * np.abs(in_original).max())
    np.testing.assert_allclose(np.linalg.norm(original_fit.normals, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(original_fit.val_accuracy, scaled_fit.val_accuracy)


@pytest.mark.parametrize("order", ["shared", "independent"])
def test_ridge_equals_a_direct_solve(problem, order):
    latents, labels = problem
    C = 0.7
    result = fit_boundaries(latents, labels, "ridge", C=C, order=order, seed=SEED, tol=1e-7, progress=False)
    data = prepare(latents, labels, scaling="minmax", seed=SEED, order=order, device="cpu")
    roles = assign_roles(data, labels, np.arange(len(labels)), balance=True, val_fraction=0.3)
    features = np.c_[_scaled(latents, labels)[data.codes], np.ones(len(data.codes))]
    for row in range(len(labels)):
        train = roles.train[row].numpy()
        targets = roles.targets[row].double().numpy()[train]
        system = np.eye(features.shape[1]) + 2 * C * features[train].T @ features[train]
        weights = np.linalg.solve(system, 2 * C * features[train].T @ targets)
        norm = np.linalg.norm(weights[:-1])
        np.testing.assert_allclose(result.normals[row], weights[:-1] / norm, atol=2e-5)
        assert result.intercepts[row] == pytest.approx(weights[-1] / norm, abs=1e-4)


def test_independent_order_keeps_the_split_sizes_and_randomises_per_reference(problem):
    latents, labels = problem
    data = prepare(latents, labels, scaling="minmax", seed=SEED, order="independent", device="cpu")
    roles = assign_roles(data, labels, np.arange(len(labels)), balance=True, val_fraction=0.3)
    block = labels[:, data.codes]
    for row in range(len(labels)):
        kept = min((block[row] == 1).sum(), (block[row] == 0).sum())
        for label in (0, 1):
            assert (roles.train[row].numpy() & (block[row] == label)).sum() == int(kept * 0.7)
            assert (roles.val[row].numpy() & (block[row] == label)).sum() == kept - int(kept * 0.7)
    again = assign_roles(data, labels[3:5], np.arange(3, 5), balance=True, val_fraction=0.3)
    np.testing.assert_array_equal(again.train.numpy(), roles.train[3:5].numpy())
    assert not np.array_equal(roles.train[0].numpy(), roles.train[1].numpy())


def test_unbalanced_labels_keep_both_classes_equal(problem):
    latents, _ = problem
    embeddings = np.random.default_rng(1).standard_normal((len(latents), 5))
    labels = identity_labels(embeddings, 4, threshold=0.3)  # far fewer similar than dissimilar codes
    data: FitData = prepare(latents, labels, scaling="minmax", seed=0, order="shared", device="cpu")
    roles = assign_roles(data, labels, np.arange(4), balance=True, val_fraction=0.3)
    block = labels[:, data.codes]
    for row in range(4):
        similar = (roles.train[row].numpy() & (block[row] == 1)).sum()
        assert similar == (roles.train[row].numpy() & (block[row] == 0)).sum() == int((block[row] == 1).sum() * 0.7)
    unbalanced = assign_roles(data, labels, np.arange(4), balance=False, val_fraction=0.3)
    assert unbalanced.train.sum() + unbalanced.val.sum() == (labels >= 0).sum()


@pytest.mark.parametrize("options, error, words", [
    ({"solver": "svc"}, ConfigError, "unknown boundary solver"),
    ({"regularisation": 1.0}, ConfigError, "unknown boundary option"),
    ({"val_fraction": 1.0}, ConfigError, "val_fraction"),
    ({"C": 0.0}, ConfigError, "boundary.C"),
    ({"space": "w"}, ConfigError, "boundary.space"),
    ({"scaling": "standard"}, ConfigError, "boundary.scaling"),
])
def test_bad_options(problem, options, error, words):
    latents, labels = problem
    with pytest.raises(error, match=words):
        fit_boundaries(latents, labels, **options)


def test_bad_data(problem):
    latents, labels = problem
    with pytest.raises(DataError, match=r"labels must be \[R, N=299\]"):
        fit_boundaries(latents[:-1], labels)
    bad = labels.copy()
    bad[0, 0] = 2
    with pytest.raises(DataError, match="1 \\(similar\\)"):
        fit_boundaries(latents, bad)
    with pytest.raises(DataError, match="NaN"):
        fit_boundaries(np.full_like(latents, np.nan), labels)


def test_no_warnings_on_a_clean_fit(problem):
    latents, labels = problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_boundaries(latents, labels, "batched", progress=False)


def test_no_module_of_the_boundary_package_imports_the_package_itself():
    """The solvers read their options from `boundary.options`; `boundary/__init__` dispatches to the solvers,
    so a solver importing the package back would close an import cycle."""
    import ast
    from pathlib import Path

    import exfacegan.boundary as package

    folder = Path(package.__file__).parent
    for path in sorted(folder.glob("*.py")):
        if path.name == "__init__.py":
            continue
        imported = {node.module for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Import) for alias in node.names}
        assert "exfacegan.boundary" not in imported, path.name
