"""Run-folder artifacts are checked when a stage reads them: a damaged or foreign file (truncated .npz, non-JSON
fingerprint, non-UTF-8 manifest, w of the wrong width, labels of the wrong shape...) stops the run with exit
status 2 and one line that names the file, and leaves no stage folder behind."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from exfacegan.data import run_artifacts
from exfacegan.errors import DataError

N, R, W_DIM = 12, 3, 64  # the small run below: sample.num_samples, label.num_references, the smoke GAN's w_dim
SMALL = ("experiment=smoke", "logger=none", "cache_dir=null", f"sample.num_samples={N}", f"label.num_references={R}",
         "sampling.per_class=2", "gan.batch_size=6")


def _latents(folder: Path, **changes: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"z": rng.standard_normal((N, 64), dtype=np.float32), "w": rng.standard_normal((N, W_DIM), dtype=np.float32),
              "seeds": np.arange(N), "found": np.ones(N, bool), **changes}
    (folder / "sample").mkdir(parents=True, exist_ok=True)
    np.savez(folder / "sample" / "latents.npz", **arrays)
    return folder / "sample" / "latents.npz"


def test_a_well_formed_file_is_read_and_binds_the_sizes(tmp_path):
    _latents(tmp_path)
    sizes = {"N": N}
    arrays = run_artifacts.sample_latents(tmp_path, sizes)
    assert arrays["w"].shape == (N, W_DIM) and sizes == {"N": N, "w_dim": W_DIM}


@pytest.mark.parametrize(("changes", "message"), [
    ({"w": np.zeros((N, 3), np.float32)}, "w has shape (12, 3): 3 where the GAN's w_dim is 64"),
    ({"w": np.zeros((N - 1, W_DIM), np.float32)}, "w has shape (11, 64): 11 where sample.num_samples is 12"),
    ({"w": np.zeros(N, np.float32)}, "w has shape (12,), expected 2 dimensions"),
    ({"found": np.ones(N, np.float32)}, "found has dtype float32"),
    ({"w": np.full((N, W_DIM), np.nan, np.float32)}, "w holds NaN"),
])
def test_latents_of_the_wrong_shape_dtype_or_values_are_refused_naming_the_file(tmp_path, changes, message):
    path = _latents(tmp_path, **changes)
    with pytest.raises(DataError) as error:
        run_artifacts.sample_latents(tmp_path, {"N": N, "w_dim": W_DIM})
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "rerun the sample stage" in str(error.value) and "overwrite=true" in str(error.value)


def test_a_truncated_npz_a_missing_array_and_a_pickled_array_are_refused(tmp_path):
    path = _latents(tmp_path)
    data = path.read_bytes()
    for damaged, message in [(data[: len(data) // 2], "not a readable .npz"), (b"", "not a readable .npz")]:
        path.write_bytes(damaged)
        with pytest.raises(DataError, match="not a readable .npz"):
            run_artifacts.sample_latents(tmp_path, {})
    _latents(tmp_path, found=np.array([{"a": 1}] * N, dtype=object))
    with pytest.raises(DataError, match="not a readable .npz"):
        run_artifacts.sample_latents(tmp_path, {})
    np.savez(path, z=np.zeros((N, 4), np.float32), w=np.zeros((N, 4), np.float32))
    with pytest.raises(DataError, match=r"lacks the arrays \['seeds', 'found'\]"):
        run_artifacts.sample_latents(tmp_path, {})


def test_labels_must_be_minus_one_zero_or_one_with_references_among_the_codes(tmp_path):
    (tmp_path / "label").mkdir()
    path = tmp_path / "label" / "labels.npz"
    np.savez(path, labels=np.zeros((R, N), np.int8), references=np.arange(R))
    assert run_artifacts.labels(tmp_path, {"N": N, "R": R})["labels"].shape == (R, N)
    for labels, references, message in [
        (np.full((R, N), 2, np.int8), np.arange(R), "other than -1, 0 and 1"),
        (np.zeros((R, N), np.int8), np.array([0, 1, N]), "not code indices below 12"),
        (np.zeros((R, N - 1), np.int8), np.arange(R), "11 where sample.num_samples is 12"),
        (np.zeros((R, N), np.float32), np.arange(R), "labels has dtype float32"),
    ]:
        np.savez(path, labels=labels, references=references)
        with pytest.raises(DataError, match=message):
            run_artifacts.labels(tmp_path, {"N": N, "R": R})


def test_json_and_csv_must_decode_and_hold_their_keys(tmp_path):
    path = tmp_path / "fingerprint.json"
    for text, message in [("{'fingerprint': 1", "not readable JSON"), ("[1, 2]", "holds a JSON list"),
                          ('{"stage": "fit"}', "lacks 'fingerprint'")]:
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            run_artifacts.read_json(path, "fit", {"fingerprint": str})
    path.write_bytes(b'{"fingerprint": "\xff\xfe"}')
    with pytest.raises(DataError, match="not readable JSON"):
        run_artifacts.read_json(path, "fit", {"fingerprint": str})
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes("path,class,side\n00000/é.png,0,same\n".encode("latin-1"))
    with pytest.raises(DataError, match="not a readable UTF-8 CSV"):
        run_artifacts.read_csv_header(manifest, "generate", run_artifacts.MANIFEST_COLUMNS)
    manifest.write_text("path,class\n00000/00000_000.png,0\n")
    with pytest.raises(DataError, match=r"lacks the columns \['side'\]"):
        run_artifacts.read_csv_header(manifest, "generate", run_artifacts.MANIFEST_COLUMNS)


# --- through the app: exit 2, one line naming the file, no stage folder left ---------------------------------

def _smoke(*overrides: str):
    from hydra import compose, initialize_config_dir

    from exfacegan.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*SMALL, *overrides])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from exfacegan.app import run_pipeline

    run = tmp_path_factory.mktemp("prepared") / "run"
    run_pipeline(_smoke("stages=[sample,label,fit,generate]", f"run_dir={run}"))
    return run


def _rewrite_npz(path: Path, **changes) -> None:
    arrays = {**dict(np.load(path)), **changes}
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


MALFORMED = {  # case: (stage run, file damaged, damage, words of the message)
    "non-JSON fingerprint": ("label", "sample/fingerprint.json", lambda p: p.write_text("{not json"),
                             "not readable JSON"),
    "fingerprint without its key": ("fit", "label/fingerprint.json", lambda p: p.write_text("{}"),
                                    "lacks 'fingerprint'"),
    "truncated labels.npz": ("fit", "label/labels.npz", _truncate, "not a readable .npz"),
    "w cut to 3 columns": ("fit", "sample/latents.npz", lambda p: _rewrite_npz(p, w=np.load(p)["w"][:, :3]),
                           "3 where the GAN's w_dim is 64"),
    "embeddings of another sample": ("label", "sample/embeddings.npy", lambda p: np.save(p, np.load(p)[:-1]),
                                     "11 where sample.num_samples is 12"),
    "labels of another sample": ("fit", "label/labels.npz", lambda p: _rewrite_npz(p, labels=np.load(p)["labels"][:, :-1]),
                                 "11 where sample.num_samples is 12"),
    "boundaries of another GAN": ("generate", "fit/boundaries.npz",
                                  lambda p: _rewrite_npz(p, normals=np.load(p)["normals"][:, :32]), "another GAN"),
    "boundaries without valid": ("generate", "fit/boundaries.npz", lambda p: _rewrite_npz(p, valid=None),
                                 "lacks the arrays ['valid']"),
    "non-UTF-8 manifest": ("analyze", "generate/manifest.csv",
                           lambda p: p.write_bytes(p.read_bytes().replace(b"same", "sàme".encode("latin-1"))),
                           "not a readable UTF-8 CSV"),
    "non-JSON stats": ("analyze", "generate/stats.json", _truncate, "not readable JSON"),
    "truncated boundaries read by analyze": ("analyze", "fit/boundaries.npz", _truncate, "not a readable .npz"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_artifact_stops_the_stage_with_exit_2_and_one_line_naming_it(case, prepared, tmp_path, capsys):
    from exfacegan.app import run_pipeline
    from exfacegan.cli.entry import report_errors
    from exfacegan.run import _discard_unstarted_stages

    stage, name, damage, message = MALFORMED[case]
    run = tmp_path / "run"
    shutil.copytree(prepared, run)
    shutil.rmtree(run / stage, ignore_errors=True)
    damage(run / name)
    before = sorted(p.name for p in run.iterdir())
    cfg = _smoke(f"stages=[{stage}]", f"run_dir={run}")
    capsys.readouterr()
    status = report_errors(lambda: run_pipeline(cfg), cleanup=lambda: _discard_unstarted_stages(cfg))
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"exfacegan: error: {run / name}: ") and message in lines[0], lines[0]
    assert "overwrite=true" in lines[0]
    assert sorted(p.name for p in run.iterdir()) == before  # no stage or partial folder left


def test_the_malformed_cases_are_read_by_the_stages_they_name():
    """Guards the table above: each damaged file is one the named stage reads (UPSTREAM), or its own input."""
    from exfacegan.app import UPSTREAM

    for case, (stage, name, _, _) in MALFORMED.items():
        assert name.split("/")[0] in UPSTREAM[stage], case


@pytest.mark.slow
def test_the_files_the_stages_write_pass_their_readers(prepared):
    cfg = _smoke()
    sizes = run_artifacts.config_sizes(cfg)
    assert sizes == {"N": N, "R": R, "w_dim": W_DIM}
    run_artifacts.sample_latents(prepared, sizes)
    run_artifacts.sample_embeddings(prepared, sizes)
    run_artifacts.labels(prepared, sizes)
    run_artifacts.boundaries(prepared, sizes)
    run_artifacts.generate_outputs(prepared)
    assert sizes == {"N": N, "R": R, "w_dim": W_DIM}  # every array agreed with the config
