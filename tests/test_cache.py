"""The verified stage cache: every finished stage records its files' SHA-256 and size (contents.json), cache
entries are copies that a run's in-place edit cannot reach, and an entry that differs from its record
(tampered, truncated, extra or missing files, a damaged record) is discarded with one warning naming the
file, and the stage recomputed."""

import hashlib
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from exfacegan.contents import CONTENTS_FILE
from exfacegan.pipeline import RunDirectory, StageCache

FILES = {"latents.npz": os.urandom(3 * (1 << 20) + 5), "embeddings.npy": b"\x93NUMPY" + bytes(range(256)),
         "chunks/000000000.npz": b"chunk"}


def _finished_stage(root: Path, stage: str = "sample", fingerprint: str = "fp") -> RunDirectory:
    run = RunDirectory(root)
    partial = run.begin(stage, fingerprint, overwrite=False)
    for name, data in FILES.items():
        (partial / name).parent.mkdir(parents=True, exist_ok=True)
        (partial / name).write_bytes(data)
    run.commit(stage)
    return run


def _stored(tmp_path: Path) -> tuple[RunDirectory, StageCache, Path]:
    run = _finished_stage(tmp_path / "a")
    cache = StageCache(tmp_path / "cache")
    cache.store("sample", "fp", run.stage_dir("sample"))
    return run, cache, cache.entry("sample", "fp")


def test_a_committed_stage_records_every_files_sha256_size_and_where_and_when_it_was_computed(tmp_path):
    run = _finished_stage(tmp_path / "a")
    record = json.loads((run.stage_dir("sample") / CONTENTS_FILE).read_text())
    expected = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in FILES.items()}
    marker = (run.stage_dir("sample") / "fingerprint.json").read_bytes()
    expected["fingerprint.json"] = {"sha256": hashlib.sha256(marker).hexdigest(), "size": len(marker)}
    assert record["files"] == expected
    assert (record["stage"], record["fingerprint"]) == ("sample", "fp")
    assert record["computed_in"] == str((tmp_path / "a").resolve())


def test_an_in_place_edit_of_a_runs_file_leaves_the_cache_entry_and_a_later_run_gets_the_original(tmp_path):
    first, cache, entry = _stored(tmp_path)
    edited = first.stage_dir("sample") / "latents.npz"
    with open(edited, "r+b") as handle:  # in place: same inode, as an editor or a careless script would
        handle.write(b"EDITED")
    assert (entry / "latents.npz").read_bytes() == FILES["latents.npz"]
    second = RunDirectory(tmp_path / "b")
    assert cache.fetch("sample", "fp", second.stage_dir("sample"))
    fetched = second.stage_dir("sample") / "latents.npz"
    assert fetched.read_bytes() == FILES["latents.npz"]
    with open(fetched, "r+b") as handle:  # and the fetched copy is no way into the entry either
        handle.write(b"EDITED")
    assert (entry / "latents.npz").read_bytes() == FILES["latents.npz"]
    assert len({p.stat().st_ino for p in (edited, fetched, entry / "latents.npz")}) == 3


def test_entry_files_are_read_only(tmp_path):
    _, _, entry = _stored(tmp_path)
    modes = {p.relative_to(entry).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in entry.rglob("*") if p.is_file()}
    assert modes == {name: 0o444 for name in [*FILES, "fingerprint.json", CONTENTS_FILE]}


def _flip_a_byte(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:100])


def _add_file(entry: Path) -> None:
    (entry / "chunks" / "stray.npz").write_bytes(b"x")


def _damage_record(entry: Path) -> None:
    os.chmod(entry / CONTENTS_FILE, 0o644)
    (entry / CONTENTS_FILE).write_text('{"stage": "sample", "files": ')


DAMAGE = {
    "a byte flipped": (lambda entry: _flip_a_byte(entry / "latents.npz"), "latents.npz has sha256"),
    "a byte flipped in a subfolder": (lambda entry: _flip_a_byte(entry / "chunks" / "000000000.npz"),
                                      "chunks/000000000.npz has sha256"),
    "truncated": (lambda entry: _truncate(entry / "embeddings.npy"), "embeddings.npy has 100 bytes"),
    "deleted": (lambda entry: (entry / "latents.npz").unlink(), "latents.npz is missing"),
    "a file added": (_add_file, "chunks/stray.npz is not in its record"),
    "record damaged": (_damage_record, "unreadable contents.json"),
    "record deleted": (lambda entry: (entry / CONTENTS_FILE).unlink(), "has no contents.json"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_an_entry_that_differs_from_its_record_is_discarded_with_one_warning_naming_the_file(case, tmp_path, caplog):
    _, cache, entry = _stored(tmp_path)
    damage, message = DAMAGE[case]
    damage(entry)
    second = RunDirectory(tmp_path / "b")
    with caplog.at_level(logging.WARNING, logger="exfacegan.pipeline"):
        assert cache.fetch("sample", "fp", second.stage_dir("sample")) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and message in warnings[0] and str(entry) in warnings[0], warnings
    assert "\n" not in warnings[0]
    assert not entry.exists()  # discarded: the recomputed stage is stored in its place
    assert not second.stage_dir("sample").exists()
    assert not second.root.exists() or list(second.root.iterdir()) == []  # no half-fetched copy left behind


def test_the_recomputed_stage_replaces_a_discarded_entry(tmp_path):
    _, cache, entry = _stored(tmp_path)
    _flip_a_byte(entry / "latents.npz")
    assert cache.fetch("sample", "fp", tmp_path / "b" / "sample") is None
    rerun = _finished_stage(tmp_path / "c")
    cache.store("sample", "fp", rerun.stage_dir("sample"))
    assert cache.fetch("sample", "fp", tmp_path / "d" / "sample")
    assert (tmp_path / "d" / "sample" / "latents.npz").read_bytes() == FILES["latents.npz"]


def _smoke(*overrides: str):
    from hydra import compose, initialize_config_dir

    from exfacegan.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=smoke", "logger=none", *overrides])


SMALL = ("stages=[sample,label]", "sample.num_samples=12", "label.num_references=3", "gan.batch_size=6")


@pytest.mark.slow
def test_a_tampered_entry_is_warned_about_and_recomputed_to_a_clean_runs_result(tmp_path, caplog):
    from exfacegan.app import run_pipeline

    cache = tmp_path / "cache"
    run_pipeline(_smoke(*SMALL, f"run_dir={tmp_path / 'a'}", f"cache_dir={cache}"))
    run_pipeline(_smoke(*SMALL, f"run_dir={tmp_path / 'clean'}", "cache_dir=null"))
    entry = next((cache / "sample").iterdir())
    latents = entry / "latents.npz"
    os.chmod(latents, 0o644)
    arrays = dict(np.load(latents))
    arrays["w"][0, 0] += 1.0  # a plausible file: same keys, shapes and size, another value
    with open(latents, "wb") as handle:
        np.savez(handle, **arrays)
    with caplog.at_level(logging.INFO):
        run_pipeline(_smoke(*SMALL, f"run_dir={tmp_path / 'b'}", f"cache_dir={cache}"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "latents.npz has sha256" in warnings[0], warnings
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("sample: running in") for m in messages)
    assert any(m.startswith("label: reused the cached result") for m in messages)  # the label entry was intact
    for name in ("sample/latents.npz", "label/labels.npz", "sample/embeddings.npy"):
        _assert_same_arrays(tmp_path / "b" / name, tmp_path / "clean" / name)
    _assert_same_arrays(entry / "latents.npz", tmp_path / "clean" / "sample" / "latents.npz")  # stored anew


def _assert_same_arrays(path: Path, expected: Path) -> None:
    """Equal arrays (an .npz's bytes hold the time it was written)."""
    if path.suffix == ".npy":
        np.testing.assert_array_equal(np.load(path), np.load(expected))
        return
    found, wanted = np.load(path), np.load(expected)
    assert found.files == wanted.files
    for key in wanted.files:
        np.testing.assert_array_equal(found[key], wanted[key], err_msg=f"{path}: {key}")
