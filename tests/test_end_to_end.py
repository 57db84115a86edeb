"""The Hydra app through its command line, on small smoke-config runs: resume after SIGKILL, shards
through the joblib launcher, the stage cache of a multirun, refusals, and bad input.

Sample, label and fit run once per module (`prepared`); each test works on its own copy. Every
command runs from a temporary directory with `cache_dir` off or temporary, so the repository's
outputs/ and multirun/ are never touched (and the configs must be found from elsewhere).
"""

import csv
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # every test runs the app in a subprocess: 10-90 s each on a 2-core CPU

SMALL = ["experiment=smoke", "logger=none", "sample.num_samples=64", "label.num_references=6", "sampling.per_class=8"]
# 6 references, both sides: 12 classes of 8 images in 6 chunks of 2 batches.
GENERATE = ["stages=[generate]", "gan.batch_size=8", "generate.references_per_chunk=1"]
NUM_IMAGES = 96


def run_app(*overrides: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exfacegan.run", *overrides], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _files(root: Path) -> dict[str, bytes]:
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    if "contents.json" in files:  # the stage's record names the run and time that computed it; its hashes must agree
        files["contents.json"] = json.dumps(json.loads(files["contents.json"])["files"], sort_keys=True).encode()
    return files


def _leftovers(run_dir: Path) -> list[str]:
    """Temporary or unfinished things that a finished run must not contain."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.name.endswith((".partial", ".tmp", ".new", ".old", ".fetch")))


def _copy(prepared: Path, destination: Path) -> Path:
    shutil.copytree(prepared, destination)
    return destination


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A run directory with finished sample, label and fit stages."""
    root = tmp_path_factory.mktemp("prepared")
    _ok(run_app(*SMALL, "stages=[sample,label,fit]", f"run_dir={root / 'run'}", "cache_dir=null", cwd=root))
    return root / "run"


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory) -> dict[str, bytes]:
    """Every file of the generate stage of an unsharded, uninterrupted run."""
    root = tmp_path_factory.mktemp("uninterrupted")
    run = _copy(prepared, root / "run")
    _ok(run_app(*SMALL, *GENERATE, f"run_dir={run}", "cache_dir=null", cwd=root))
    files = _files(run / "generate")
    assert len([name for name in files if name.startswith("dataset/")]) == NUM_IMAGES
    assert _leftovers(run) == []
    return files


def _kill_when(command: list[str], cwd: Path, count: Callable[[], int], goal: int) -> None:
    """Start `command`, and SIGKILL it as soon as `count()` reaches `goal`."""
    process = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None and count() < goal:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"the command finished (exit {process.returncode}) before {goal}"


def _images(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.png")) if folder.is_dir() else 0  # temp files end in .tmp


def _stamp(path: Path) -> tuple[int, int]:
    """(inode, mtime): an atomic rewrite changes both."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def _completed_chunks(partial: Path) -> dict[str, tuple[int, int]]:
    """The stamps of each recorded chunk's record and images."""
    stamps = {}
    for record in (partial / "progress").glob("*.csv"):
        with open(record, newline="") as f:
            paths = [f"dataset/{row['path']}" for row in csv.DictReader(f) if row["found"] == "1"]
        stamps.update({name: _stamp(partial / name) for name in [f"progress/{record.name}", *paths]})
    return stamps


def test_generate_killed_repeatedly_resumes_to_the_uninterrupted_dataset(prepared, uninterrupted, tmp_path):
    run = _copy(prepared, tmp_path / "run")
    command = [sys.executable, "-m", "exfacegan.run", *SMALL, *GENERATE, f"run_dir={run}", "cache_dir=null"]
    partial = run / "generate.partial"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # Kill once the dataset holds this many images: in the first, middle and last thirds of the work, and
    # always before the last batch (8 images), which is followed by the stage's end within milliseconds.
    targets = [rng.randrange(4, 30), rng.randrange(34, 62), rng.randrange(66, NUM_IMAGES - 8 + 1)]
    done: dict[str, tuple[int, int]] = {}
    for target in targets:
        def images() -> int:
            return _images(partial / "dataset")

        _kill_when(command, tmp_path, images, max(target, images() + 1))  # each run adds images before its kill
        assert not (run / "generate").exists()
        done.update(_completed_chunks(partial))
    assert any(name.startswith("progress/") for name in done), f"no chunk was completed (seed {seed})"

    _ok(subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300))

    finished = _files(run / "generate")
    assert finished.keys() == uninterrupted.keys(), f"seed {seed}"  # no missing, extra or temp files
    assert finished == uninterrupted, f"seed {seed}"  # every image and the manifest, byte for byte
    assert _leftovers(run) == []
    rewritten = [name for name, stamp in done.items() if _stamp(run / "generate" / name) != stamp]
    assert rewritten == [], f"chunks completed before a kill were redone (seed {seed})"


def test_sample_killed_repeatedly_resumes_to_the_uninterrupted_result(prepared, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "exfacegan.run", *SMALL, "stages=[sample]", f"run_dir={run}", "cache_dir=null"]
    chunks = run / "sample.partial" / "chunks"  # one file per finished batch of 16 samples, 4 in all

    def finished() -> int:
        return len(list(chunks.glob("*.npz")))

    _kill_when(command, tmp_path, finished, 2)
    # Batches after the preview's (the first 16 samples, drawn again on resume) must not be redone.
    kept = {p.name: _stamp(p) for p in chunks.glob("*.npz") if int(p.stem) >= 16}
    assert kept
    _kill_when(command, tmp_path, finished, 3)
    assert {name: _stamp(chunks / name) for name in kept} == kept
    _ok(subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300))

    for name in ("embeddings.npy", "preview.png", "fingerprint.json"):
        assert (run / "sample" / name).read_bytes() == (prepared / "sample" / name).read_bytes(), name
    resumed, uninterrupted = (np.load(folder / "sample" / "latents.npz") for folder in (run, prepared))
    assert resumed.files == uninterrupted.files
    for key in resumed.files:
        np.testing.assert_array_equal(resumed[key], uninterrupted[key])
    assert sorted(p.name for p in (run / "sample").iterdir()) == sorted(p.name for p in (prepared / "sample").iterdir())
    assert _leftovers(run) == []


def test_fit_killed_repeatedly_resumes_to_the_uninterrupted_boundaries(prepared, tmp_path):
    # One reference per chunk, and a solver tolerance tight enough that each chunk takes a while.
    slow_fit = ["stages=[fit]", "boundary=batched", "fit.references_per_chunk=1", "boundary.tol=1e-10",
                "boundary.max_iter=200", "cache_dir=null"]
    straight = _copy(prepared, tmp_path / "straight")
    shutil.rmtree(straight / "fit")
    _ok(run_app(*SMALL, *slow_fit, f"run_dir={straight}", cwd=tmp_path))
    run = _copy(prepared, tmp_path / "run")
    shutil.rmtree(run / "fit")
    command = [sys.executable, "-m", "exfacegan.run", *SMALL, *slow_fit, f"run_dir={run}"]
    chunks = run / "fit.partial" / "chunks"  # one file per finished reference, 6 in all

    def finished() -> int:
        return len(list(chunks.glob("*.npz")))

    _kill_when(command, tmp_path, finished, 2)
    kept = {p.name: _stamp(p) for p in chunks.glob("*.npz")}
    _kill_when(command, tmp_path, finished, len(kept) + 2)
    assert {name: _stamp(chunks / name) for name in kept} == kept  # finished chunks were not refitted
    _ok(subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300))

    resumed, uninterrupted = (np.load(folder / "fit" / "boundaries.npz") for folder in (run, straight))
    assert resumed.files == uninterrupted.files
    for key in resumed.files:
        np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)
    assert _leftovers(run) == [] and not (run / "fit" / "chunks").exists()


def test_two_shards_through_joblib_then_merge_equal_the_unsharded_run(prepared, uninterrupted, tmp_path):
    run = _copy(prepared, tmp_path / "run")
    sweep = tmp_path / "sweep"
    _ok(run_app("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", *SMALL, *GENERATE,
                "generate.num_shards=2", "generate.shard=0,1", f"run_dir={run}", "cache_dir=null", cwd=tmp_path))
    for job in (0, 1):
        assert f"shard {job}/2 done" in (sweep / str(job) / "run.log").read_text()
    assert not (run / "generate").exists()  # only the merge stage finishes a sharded stage
    merged = _ok(run_app(*SMALL, "stages=[merge]", f"run_dir={run}", "cache_dir=null", cwd=tmp_path))
    assert "merge: done" in merged.stdout
    assert _files(run / "generate") == uninterrupted
    assert _leftovers(run) == []


def test_merge_with_a_missing_shard_fails_and_keeps_the_finished_shard(prepared, tmp_path):
    run = _copy(prepared, tmp_path / "run")
    _ok(run_app(*SMALL, *GENERATE, f"run_dir={run}", "cache_dir=null", "generate.num_shards=2", "generate.shard=1",
                cwd=tmp_path))
    shard_files = _files(run / "generate.partial")
    result = run_app(*SMALL, "stages=[merge]", f"run_dir={run}", "cache_dir=null", cwd=tmp_path)
    _assert_one_error_line(result, "chunks are not generated yet")
    assert not (run / "generate").exists()
    assert _files(run / "generate.partial") == shard_files  # the shard's work is kept for the next try


def test_multirun_shares_the_cached_sample_stage(tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    _ok(run_app("-m", "experiment=smoke", "logger=none", "sample.num_samples=32", "label.num_references=4",
                "stages=[sample,label]", "label.threshold=median,0.2", f"cache_dir={cache}",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path))
    first, second = sweep / "0", sweep / "1"
    assert "sample: reused the cached result" not in (first / "run.log").read_text()
    assert "sample: reused the cached result" in (second / "run.log").read_text()
    latents = [run / "sample" / "latents.npz" for run in (first, second)]
    assert latents[0].read_bytes() == latents[1].read_bytes()
    assert latents[0].stat().st_ino != latents[1].stat().st_ino  # a copy: editing one run's file leaves the other's
    labels = [np.load(run / "label" / "labels.npz")["labels"] for run in (first, second)]
    assert labels[0].shape == labels[1].shape and not np.array_equal(labels[0], labels[1])


def test_other_config_in_the_same_run_dir_is_refused_unless_overwrite(prepared, tmp_path):
    run = _copy(prepared, tmp_path / "run")
    before = _files(run / "label")
    result = run_app(*SMALL, "stages=[sample,label,fit]", "label.threshold=0.2", f"run_dir={run}", "cache_dir=null",
                     cwd=tmp_path)
    _assert_one_error_line(result, "overwrite=true")
    assert _files(run / "label") == before
    _ok(run_app(*SMALL, "stages=[label]", "label.threshold=0.2", "overwrite=true", f"run_dir={run}", "cache_dir=null",
                cwd=tmp_path))
    relabelled, original = (np.load(folder / "label" / "labels.npz")["labels"] for folder in (run, prepared))
    assert not np.array_equal(relabelled, original)
    assert _leftovers(run) == []


def _assert_one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("exfacegan: error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def _truncated_generator_pickle(folder: Path) -> Path:
    path = folder / "G.pkl"
    data = pickle.dumps({"G_ema": {"weight": torch.randn(64, 64)}, "training_set_kwargs": {"resolution": 64}})
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_embedder_checkpoint(folder: Path) -> Path:
    path = folder / "backbone.pth"
    torch.save({"conv1.weight": torch.randn(64, 3, 3, 3), "fc.weight": torch.randn(512, 512)}, path)
    path.write_bytes(path.read_bytes()[:1000])
    return path


def _gan_source(path: str) -> str:
    return f"gan.network={{_target_:exfacegan.gans.load_generator,source:'{path}'}}"


BAD_INPUTS = {
    "missing generator checkpoint": (lambda tmp: [_gan_source("/nonexistent/G.pkl")], "not found"),
    "corrupt generator checkpoint": (lambda tmp: [_gan_source(str(_truncated_generator_pickle(tmp)))],
                                     "not a readable network pickle"),
    "missing embedder checkpoint": (lambda tmp: ["embedder=iresnet50", "embedder.checkpoint=/nonexistent/backbone.pth"],
                                    "does not exist"),
    "corrupt embedder checkpoint": (lambda tmp: ["embedder=iresnet50",
                                                 f"embedder.checkpoint={_truncated_embedder_checkpoint(tmp)}"],
                                    "cannot read embedder checkpoint"),
    "threshold above 1": (lambda tmp: ["label.threshold=1.5"], "label.threshold"),
    "threshold below -1": (lambda tmp: ["label.threshold=-1.01"], "label.threshold"),
    "more references than samples": (lambda tmp: ["label.num_references=65"], "num_references=65"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_error_line_and_leaves_nothing(case, tmp_path):
    overrides, message = BAD_INPUTS[case]
    run = tmp_path / "run"
    result = run_app(*SMALL, *overrides(tmp_path), f"run_dir={run}", "cache_dir=null", cwd=tmp_path)
    _assert_one_error_line(result, message)
    # Hydra's own records and the run's config may be there; no stage folder, partial or temporary file.
    assert {p.name for p in run.iterdir()} <= {".hydra", "run.log", "config.yaml", "provenance.json"}


def test_boundaries_from_another_gan_give_one_error_line_and_leave_nothing(prepared, tmp_path):
    run = _copy(prepared, tmp_path / "run")
    boundaries = dict(np.load(run / "fit" / "boundaries.npz"))
    for key in ("normals", "reference_latents"):  # as fitted in the 32-d latent space of another GAN
        boundaries[key] = boundaries[key][:, :32]
    np.savez(run / "fit" / "boundaries.npz", **boundaries)
    before = {stage: _files(run / stage) for stage in ("sample", "label", "fit")}
    result = run_app(*SMALL, *GENERATE, f"run_dir={run}", "cache_dir=null", cwd=tmp_path)
    _assert_one_error_line(result, "another GAN")
    assert not (run / "generate").exists() and _leftovers(run) == []
    assert {stage: _files(run / stage) for stage in before} == before


def test_generating_with_a_gan_other_than_the_fitted_one_gives_one_error_line(prepared, tmp_path):
    run = _copy(prepared, tmp_path / "run")
    result = run_app(*SMALL, *GENERATE, "gan.small.w_dim=32", f"run_dir={run}", "cache_dir=null", cwd=tmp_path)
    lines = result.stderr.splitlines()
    # Found from the latent size (the generate stage) or from the fingerprints (the app, before any work).
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("exfacegan: error: ")
    assert "another GAN" in lines[0] or "another configuration" in lines[0]
    assert not (run / "generate").exists() and _leftovers(run) == []


def test_a_stage_refuses_upstream_results_made_from_another_config(prepared, tmp_path):
    # Otherwise this dataset, made from the median-threshold boundaries, is recorded as the one of threshold 0.2
    # and later counts as up to date for it, also once label and fit have been redone with 0.2.
    run = _copy(prepared, tmp_path / "run")
    result = run_app(*SMALL, *GENERATE, "label.threshold=0.2", f"run_dir={run}", "cache_dir=null", cwd=tmp_path)
    _assert_one_error_line(result, "another configuration")
    assert not (run / "generate").exists() and _leftovers(run) == []


def test_a_refused_run_leaves_the_recorded_config_alone(prepared, tmp_path):
    run = _copy(prepared, tmp_path / "run")
    records = {name: (run / name).read_bytes() for name in ("config.yaml", "provenance.json")}
    result = run_app(*SMALL, "stages=[label]", "label.threshold=0.2", f"run_dir={run}", "cache_dir=null", cwd=tmp_path)
    _assert_one_error_line(result, "overwrite=true")
    assert {name: (run / name).read_bytes() for name in records} == records
