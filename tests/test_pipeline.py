import numpy as np
import pytest

from exfacegan.data.artifacts import atomic_path
from exfacegan.errors import ConfigError
from exfacegan.pipeline import ChunkStore, RunDirectory, StageCache, fingerprint


def test_fingerprint_is_stable_and_order_independent():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "x.npy"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_stage_is_visible_only_once_committed(tmp_path):
    run = RunDirectory(tmp_path)
    partial = run.begin("fit", "abc", overwrite=False)
    (partial / "boundaries.npz").write_bytes(b"data")
    assert run.finished_fingerprint("fit") is None
    with pytest.raises(ConfigError, match="no finished 'fit'"):
        run.require("fit")
    run.commit("fit")
    assert run.finished_fingerprint("fit") == "abc"
    assert (run.require("fit") / "boundaries.npz").read_bytes() == b"data"
    assert not run.partial_dir("fit").exists()


def test_other_config_in_same_run_dir_is_refused_unless_overwrite(tmp_path):
    run = RunDirectory(tmp_path)
    run.begin("fit", "abc", overwrite=False)
    run.commit("fit")
    with pytest.raises(ConfigError, match="overwrite=true"):
        run.begin("fit", "def", overwrite=False)
    run.begin("fit", "def", overwrite=True)
    run.commit("fit")
    assert run.finished_fingerprint("fit") == "def"


def test_partial_stage_resumes_with_same_fingerprint_and_is_discarded_otherwise(tmp_path):
    run = RunDirectory(tmp_path)
    (run.begin("sample", "one", overwrite=False) / "chunk").write_text("kept")
    assert (run.begin("sample", "one", overwrite=False) / "chunk").read_text() == "kept"
    assert not (run.begin("sample", "two", overwrite=False) / "chunk").exists()


def test_cache_shares_finished_stages_between_runs(tmp_path):
    cache = StageCache(tmp_path / "cache")
    first = RunDirectory(tmp_path / "a")
    (first.begin("sample", "fp", overwrite=False) / "latents.npz").write_bytes(b"z")
    first.commit("sample")
    cache.store("sample", "fp", first.stage_dir("sample"))
    second = RunDirectory(tmp_path / "b")
    assert not cache.fetch("sample", "other", second.stage_dir("sample"))
    assert cache.fetch("sample", "fp", second.stage_dir("sample"))
    assert second.finished_fingerprint("sample") == "fp"
    assert (second.stage_dir("sample") / "latents.npz").read_bytes() == b"z"


def test_chunk_store_concatenates_in_order(tmp_path):
    store = ChunkStore(tmp_path / "chunks")
    store.save(4, x=np.array([4, 5]))
    store.save(0, x=np.arange(4))
    assert store.done(0) and store.done(4) and not store.done(8)
    np.testing.assert_array_equal(store.concatenate([0, 4])["x"], np.arange(6))


def test_only_partial_folders_this_process_created_and_left_empty_are_discarded(tmp_path):
    run = RunDirectory(tmp_path)
    run.begin("sample", "fp", overwrite=False)  # nothing saved but the marker
    (run.begin("label", "fp", overwrite=False) / "chunk.npz").write_bytes(b"work")
    theirs = run.partial_dir("fit")  # as made by another process (a shard)
    theirs.mkdir()
    (theirs / "fingerprint.json").write_text('{"stage": "fit", "fingerprint": "fp"}')
    assert run.discard_unstarted() == [run.partial_dir("sample")]
    assert run.partial_dir("label").is_dir() and theirs.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.partial", "label.partial"]  # no temporary folder


def test_one_device_resolver_serves_the_pipeline_and_the_trainer():
    import torch

    import exfacegan.config
    import exfacegan.train.distributed
    from exfacegan.devices import resolve_device

    assert exfacegan.config.resolve_device is resolve_device
    assert exfacegan.train.distributed.resolve_device is resolve_device
    assert resolve_device("cpu", job_number=3) == torch.device("cpu")
    with pytest.raises(ConfigError, match="not a device name"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto", job_number=3) == torch.device("cpu")
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda:0")
    else:
        count = torch.cuda.device_count()
        assert resolve_device("cuda", job_number=count + 1) == torch.device("cuda", 1 % count)
        assert resolve_device("cuda:0", job_number=count + 1) == torch.device("cuda", 0)


def _smoke(*overrides: str):
    from hydra import compose, initialize_config_dir

    from exfacegan.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=smoke", "logger=none", "cache_dir=null", *overrides])


DOWNSTREAM = ("sample", "label", "fit", "generate", "merge", "analyze")


BATCHED = ("boundary=batched",)


@pytest.mark.parametrize(("base", "changes"), [
    ((), ("sample.preview=3",)), ((), ("gan.batch_size=4", "sample.batch_size=5")),
    ((), ("analyze.batch_size=7", "analyze.num_workers=2")), ((), ("device=auto",)),
    ((), ("label.chunk_size=3", "fit.references_per_chunk=2", "generate.references_per_chunk=2")),
    ((), ("generate.num_shards=2", "generate.shard=1")), ((), ("boundary.n_jobs=1",)),
    (BATCHED, ("boundary.device=cuda", "boundary.chunk_size=5", "boundary.memory_budget_gb=3", "+boundary.progress=false")),
])
def test_speed_placement_and_preview_settings_keep_every_finished_stage(base, changes):
    from exfacegan.app import stage_fingerprints

    assert stage_fingerprints(_smoke(*base, *changes)) == stage_fingerprints(_smoke(*base))


@pytest.mark.parametrize(("override", "first_changed"), [
    ("sample.seed=1", "sample"), ("sample.num_samples=300", "sample"), ("gan.truncation.psi=0.5", "sample"),
    ("gan.truncation.center=zero", "sample"), ("label.threshold=0.5", "label"), ("boundary.margin=0.1", "label"),
    ("boundary.C=2", "fit"), ("sampling.seed=1", "generate"), ("sampling.max_off=2", "generate"),
    ("analyze.max_impostor_pairs=10", "analyze"),
])
def test_result_settings_change_their_stage_and_every_stage_downstream(override, first_changed):
    from exfacegan.app import stage_fingerprints

    base, changed = stage_fingerprints(_smoke()), stage_fingerprints(_smoke(override))
    upstream = DOWNSTREAM[: DOWNSTREAM.index(first_changed)]
    assert {stage for stage in DOWNSTREAM if changed[stage] != base[stage]} == set(DOWNSTREAM) - set(upstream)


def test_a_finished_stage_survives_a_new_preview_and_batch_size_but_not_a_new_seed(tmp_path):
    from exfacegan.app import run_pipeline

    small = ("stages=[sample]", "sample.num_samples=6", "label.num_references=2", f"run_dir={tmp_path}")
    run_pipeline(_smoke(*small, "gan.batch_size=4", "sample.preview=4"))
    latents = tmp_path / "sample" / "latents.npz"
    stamp = (latents.stat().st_ino, latents.stat().st_mtime_ns)
    run_pipeline(_smoke(*small, "gan.batch_size=3", "sample.preview=2"))
    assert (latents.stat().st_ino, latents.stat().st_mtime_ns) == stamp  # skipped, not recomputed
    with pytest.raises(ConfigError, match="overwrite=true"):
        run_pipeline(_smoke(*small, "sample.seed=5"))
    assert (latents.stat().st_ino, latents.stat().st_mtime_ns) == stamp


def test_provenance_records_the_revision_the_versions_and_the_checkpoint_hashes(tmp_path, monkeypatch):
    import hashlib
    import json
    import os
    import subprocess
    import sys
    import tomllib
    from datetime import datetime, timezone
    from pathlib import Path

    import torch

    from exfacegan.provenance import write_provenance

    repo = Path(__file__).resolve().parents[1]
    checkpoint = tmp_path / "backbone.pth"
    checkpoint.write_bytes(os.urandom(3 * (1 << 20) + 17))  # several read blocks and a partial one
    monkeypatch.setattr(sys, "argv", ["exfacegan.run", "embedder=iresnet50"])
    before = datetime.now(timezone.utc).replace(microsecond=0)
    write_provenance(tmp_path / "provenance.json", _smoke("embedder=iresnet50", f"embedder.checkpoint={checkpoint}"))
    record = json.loads((tmp_path / "provenance.json").read_text())

    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
    assert record["git_revision"] == git.stdout.strip()
    assert record["torch"] == torch.__version__ and record["cuda"] == torch.version.cuda
    assert record["exfacegan_version"] == tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"]
    assert record["command"] == ["exfacegan.run", "embedder=iresnet50"]
    assert before <= datetime.fromisoformat(record["written"]) <= datetime.now(timezone.utc)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    # The embedder's checkpoint setting and the network node that interpolates it both name the file.
    assert record["checkpoints"] == {key: {"path": str(checkpoint), "sha256": digest}
                                     for key in ("embedder.checkpoint", "embedder.network.checkpoint")}
