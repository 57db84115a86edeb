import numpy as np
import pytest

import exfacegan.stages.fit as fit_stage
from exfacegan.boundary import fit_boundaries
from exfacegan.errors import DataError
from exfacegan.label import identity_labels


def _problem(count=240, dim=12, references=7, seed=3):
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((count, dim)).astype(np.float32)
    embeddings = latents @ rng.standard_normal((dim, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    refs = np.arange(references) * 5
    labels = identity_labels(embeddings, refs, threshold="median", margin=0.05)
    labels[4, labels[4] == 0] = 1  # one reference with no dissimilar code: recorded as invalid
    return latents, labels, refs


@pytest.mark.parametrize("solver, options", [("svm", {"n_jobs": 1}), ("batched", {}), ("ridge", {})])
def test_rows_of_a_fit_equal_the_full_fit(solver, options):
    latents, labels, _ = _problem()
    full = fit_boundaries(latents, labels, solver, progress=False, **options)
    with pytest.warns(UserWarning, match="no boundary"):
        part = fit_boundaries(latents, labels, solver, rows=np.array([6, 4, 1]), progress=False, **options)
    # Batched solvers agree to their tolerance (different matrix shapes round differently), not bit for bit.
    for name, whole, piece in zip(full._fields, full, part):
        np.testing.assert_allclose(piece, whole[[6, 4, 1]], atol=0.02 if "accuracy" in name else 1e-4, err_msg=name)
    np.testing.assert_array_equal(part.valid, [True, False, True])


def test_fit_stage_result_does_not_depend_on_the_chunk_size(tmp_path):
    latents, labels, refs = _problem()
    saved = []
    for per_chunk in (7, 3, 1):
        out = tmp_path / str(per_chunk)
        out.mkdir()
        with pytest.warns(UserWarning):
            artifacts = fit_stage.fit(out, latents, labels, refs, solver="batched", references_per_chunk=per_chunk,
                                      progress=False)
        saved.append(dict(np.load(artifacts.boundaries)))
        assert not (out / "chunks").exists()
    for other in saved[1:]:
        for key, value in saved[0].items():
            np.testing.assert_allclose(other[key], value, atol=0.02 if "accuracy" in key else 1e-4, err_msg=key)
    np.testing.assert_array_equal(saved[0]["reference_latents"], latents[refs])


def test_interrupted_fit_resumes_without_refitting_finished_chunks(tmp_path, monkeypatch):
    latents, labels, refs = _problem()
    calls = []
    real = fit_stage.fit_boundaries

    def interrupted(*args, rows, **kwargs):
        calls.append(rows.tolist())
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, rows=rows, **kwargs)

    monkeypatch.setattr(fit_stage, "fit_boundaries", interrupted)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
        fit_stage.fit(tmp_path, latents, labels, refs, solver="ridge", references_per_chunk=3, progress=False)
    assert not (tmp_path / "boundaries.npz").exists()
    calls.clear()
    monkeypatch.setattr(fit_stage, "fit_boundaries", lambda *a, rows, **k: calls.append(rows.tolist()) or real(*a, rows=rows, **k))
    fit_stage.fit(tmp_path, latents, labels, refs, solver="ridge", references_per_chunk=3, progress=False)
    assert calls == [[6]]
    resumed = np.load(tmp_path / "boundaries.npz")
    with pytest.warns(UserWarning):
        whole = fit_boundaries(latents, labels, "ridge", progress=False)
    np.testing.assert_allclose(resumed["normals"], whole.normals, rtol=1e-5, atol=1e-6)


def test_a_fit_where_no_reference_has_both_classes_fails_in_one_line(tmp_path):
    latents, labels, refs = _problem()
    labels[labels == 0] = 1  # a threshold below every similarity: everything is "similar"
    with pytest.raises(DataError, match=r"no reference could be fitted.*100.0% of the labelled codes are similar"), \
            pytest.warns(UserWarning):
        fit_stage.fit(tmp_path, latents, labels, refs, solver="ridge", progress=False)
    assert not (tmp_path / "boundaries.npz").exists()
