"""Identity controls: distinct references (references.max_similarity) and the settings' one-line refusals."""

import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from exfacegan.app import stage_fingerprints
from exfacegan.errors import ConfigError
from exfacegan.label import distinct_references
from exfacegan.run import CONFIG_DIR
from exfacegan.stages.identity_filter import IdentityFilterSpec
from exfacegan.stages.label import label


def _greedy_oracle(embeddings: np.ndarray, bound: float, count: int | None = None) -> list[int]:
    """The definition, O(N^2) in float64: in order, accept a code below the bound to every accepted one."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    accepted: list[int] = []
    for i in range(len(unit)):
        if count is not None and len(accepted) == count:
            break
        if all(float(unit[i] @ unit[j]) < bound for j in accepted):
            accepted.append(i)
    return accepted


def _clustered(n=400, d=16, clusters=25, spread=0.6, seed=3) -> np.ndarray:
    """Codes around a few identities, so that many pairs are close and the bound matters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    return (centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d))).astype(np.float32)


def test_a_hand_worked_example():
    angles = np.deg2rad([0, 30, 90, 100, 200, 170])
    embeddings = np.stack([np.cos(angles), np.sin(angles)], 1)
    # bound cos(45°) ≈ 0.707: 30° is too close to 0°, 100° to 90°, 170° to 200° (30° apart); 200° is 110° from 90°.
    assert distinct_references(embeddings, 0.7).tolist() == [0, 2, 4]
    assert distinct_references(embeddings, 0.7, count=2).tolist() == [0, 2]
    # bound 0.9: 30° apart (cos = 0.866) now passes, 10° apart (0.985, 100° against 90°) still does not.
    assert distinct_references(embeddings, 0.9).tolist() == [0, 1, 2, 4, 5]


@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1024])
def test_greedy_selection_matches_the_definition_and_never_keeps_a_close_pair(target, chunk_size):
    embeddings = _clustered()
    unit = embeddings.astype(np.float64) / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sims = unit @ unit.T
    # The bound: the middle of the gap between two pair similarities near the target, so that no pair sits
    # within float32 rounding of it.
    values = np.unique(sims[np.triu_indices(len(sims), 1)])
    at = np.searchsorted(values, target)
    gaps = values[at - 50 : at + 50]
    widest = int(np.argmax(np.diff(gaps)))
    bound = float(gaps[widest] + gaps[widest + 1]) / 2
    assert np.abs(sims - bound).min() > 1e-6
    chosen = distinct_references(embeddings, bound, chunk_size=chunk_size)
    assert chosen.tolist() == _greedy_oracle(embeddings, bound)
    block = sims[np.ix_(chosen, chosen)]
    assert (block[~np.eye(len(chosen), dtype=bool)] < bound).all()
    assert 1 < len(chosen) < len(embeddings)
    first = distinct_references(embeddings, bound, count=len(chosen) // 2, chunk_size=chunk_size)
    assert first.tolist() == chosen[: len(chosen) // 2].tolist()


def test_too_few_distinct_codes_are_refused_in_one_line():
    embeddings = _clustered()
    available = len(_greedy_oracle(embeddings, 0.2))
    with pytest.raises(ConfigError) as error:
        distinct_references(embeddings, 0.2, count=available + 1, chunk_size=50)
    assert str(error.value) == (
        f"references.max_similarity=0.2 accepts only {available} of 400 codes as references, fewer than "
        f"label.num_references={available + 1}; raise the bound, ask for fewer references or sample more codes"
    )


def test_the_label_stage_chooses_distinct_references_in_its_pool_and_labels_them_against_the_whole_pool(tmp_path):
    embeddings = _clustered(n=120)
    found = np.ones(120, bool)
    found[[3, 10, 11, 50]] = False
    pool = np.flatnonzero(found)[:100]
    artifacts = label(tmp_path, embeddings, found, num_references=6, pool_size=100, threshold=0.3,
                      max_similarity=0.5, chunk_size=16)
    saved = np.load(artifacts.labels)
    references, labels = saved["references"], saved["labels"]
    assert references.tolist() == pool[_greedy_oracle(embeddings[pool], 0.5, 6)].tolist()
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    for row, r in zip(labels, references):
        expected = np.full(120, -1)
        expected[pool] = unit[pool] @ unit[r] >= 0.3
        expected[r] = -1
        np.testing.assert_array_equal(row, expected)


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=smoke", "logger=none", *overrides])


@pytest.mark.slow
def test_a_cross_bound_without_a_second_side_stops_the_app_with_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "exfacegan.run", "experiment=smoke", "logger=none", f"run_dir={tmp_path / 'run'}",
         "sampling.both_sides=false", "filter.max_cross_similarity=0.3"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
    )
    expected = ("exfacegan: error: filter.max_cross_similarity compares a class with the other side of its boundary; "
                "it needs sampling.both_sides=true")
    assert result.returncode == 2 and result.stderr.splitlines() == [expected], result.stderr
    assert not (tmp_path / "run" / "sample").exists()


def test_exfacegan_plus_is_the_paper_run_plus_the_controls(tmp_path):
    plus, paper = (_compose(f"experiment={name}", f"run_dir={tmp_path}") for name in ("exfacegan_plus", "paper_sg2"))
    differing = {key for key in plus if plus[key] != paper[key]}
    assert differing == {"references", "filter", "sampling"}
    assert plus.sampling.pose.yaw_range == [-45, 45] and {**plus.sampling, "pose": None} == {**paper.sampling, "pose": None}
    assert plus.references.max_similarity == 0.4 and plus.label.num_references == 5000
    assert IdentityFilterSpec.from_config(plus) == IdentityFilterSpec(0.4, 0.3)


def test_the_controls_enter_the_fingerprints_of_the_stages_they_change_and_only_when_set():
    base = stage_fingerprints(_compose())
    bare = _compose()
    with open_dict(bare):
        del bare["references"], bare["filter"]
    assert stage_fingerprints(bare) == base  # runs without the controls keep their stages (and caches)
    upstream = ("sample", "label", "fit")
    references = stage_fingerprints(_compose("references.max_similarity=0.5"))
    assert references["sample"] == base["sample"] and all(references[s] != base[s] for s in upstream[1:])
    filtered = stage_fingerprints(_compose("filter.min_reference_similarity=0.3"))
    assert all(filtered[s] == base[s] for s in upstream) and filtered["generate"] != base["generate"]
    judged = stage_fingerprints(_compose("filter.min_reference_similarity=0.3", "embedder@filter.judge=dlib"))
    assert judged["fit"] == base["fit"] and judged["generate"] not in (base["generate"], filtered["generate"])
    unjudged = stage_fingerprints(_compose("embedder@filter.judge=dlib"))  # a judge with nothing to judge
    assert unjudged == base
