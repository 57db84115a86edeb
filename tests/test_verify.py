"""`exfacegan verify`: hashes in the manifest, the re-hash of a run or export, `--regenerate`, and refusals of
hostile manifests and cards (one line, exit 2, nothing outside PATH opened).

Expected hashes come from hashlib over the bytes on disk; manifests of the hostile cases are written here by
hand. The slow tests share one smoke run (module fixture) and copy it.
"""

from __future__ import annotations

import builtins
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

from exfacegan.cli.main import main
from test_pickles import _write_official, official_names  # noqa: F401 (a fixture)
from exfacegan.data.manifest import read_manifest
from exfacegan.errors import CheckpointError, DataError

HEADER = ["path", "class", "reference", "side", "k", "attempt", "found", "rejected", "sha256"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _fake_run(root: Path, classes: int = 2, per_class: int = 2) -> Path:
    """A run folder with a generate stage of tiny PNGs and a manifest whose hashes hashlib computed."""
    generate, rows = root / "generate", []
    for cls in range(classes):
        for k in range(per_class):
            name = f"{cls:05d}/{cls:05d}_{k:03d}.png"
            path = generate / "dataset" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 10 * cls + k, np.uint8)).save(path)
            rows.append([name, cls, cls // 2, ("same", "other")[cls % 2], k, k, 1, "", _sha256(path)])
    rows.append(["", 0, 0, "same", 0, 9, 0, "no_face", ""])  # a dropped render: no file, no hash
    _write_csv(generate / "manifest.csv", HEADER, rows)
    (root / "config.yaml").write_text("gan: {network: {_target_: exfacegan.gans.random_generator}}\n"
                                      "embedder: {network: {_target_: exfacegan.embedders.random_iresnet_embedder}}\n")
    return root


def _verify(capsys, *args: object) -> tuple[int, list[str], list[str]]:
    status = main(["verify", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def _refused(capsys, *args: object) -> str:
    status, out, err = _verify(capsys, *args)
    assert status == 2, (status, out, err)
    assert out == [] and len(err) == 1 and err[0].startswith("exfacegan: error: "), (out, err)
    return err[0]


def test_a_fresh_run_verifies_and_each_change_gives_one_line(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    status, out, _ = _verify(capsys, run)
    assert status == 0 and len(out) == 1 and "verified 4 files" in out[0] and "all match" in out[0]
    assert _verify(capsys, run / "generate")[0] == 0  # the generate folder alone

    image = run / "generate/dataset/00001/00001_001.png"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[3, 4, 1] ^= 1
    Image.fromarray(pixels).save(image)
    (run / "generate/dataset/00000/00000_000.png").unlink()
    (run / "generate/dataset/00001/extra.png").write_bytes(b"not listed")
    status, out, _ = _verify(capsys, run)
    assert status == 1
    assert out[:-1] == ["missing: generate/dataset/00000/00000_000.png",
                        out[1], "unlisted: generate/dataset/00001/extra.png"]
    assert out[1].startswith("altered: generate/dataset/00001/00001_001.png (sha256 ")
    assert "1 missing, 1 altered, 1 unlisted" in out[-1]


def test_not_a_run_or_dataset_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "is not an exfacegan run" in _refused(capsys, tmp_path / "empty")
    assert "is not a folder" in _refused(capsys, tmp_path / "nothing")


def _trap(tmp_path: Path) -> Path:
    trap = tmp_path / "outside" / "trap.png"
    trap.parent.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(trap)
    return trap


def _rewrite_manifest(run: Path, change) -> None:
    path = run / "generate/manifest.csv"
    path.write_bytes(change(path.read_bytes()))


def _first_path_to(target: str):
    return lambda data: data.replace(b"00000/00000_000.png", target.encode(), 1)


HOSTILE_MANIFESTS = {
    "missing column": (lambda data: data.replace(b"path,class", b"file,class", 1), "lacks the column(s) path"),
    "no sha256 column": (lambda data: b"\n".join(line.rsplit(b",", 1)[0] for line in data.split(b"\n") if line) + b"\n",
                         "no sha256 column"),
    "absolute path": (_first_path_to("/etc/passwd"), "path='/etc/passwd'"),
    "dot-dot": (_first_path_to("../../outside/trap.png"), "not a valid value"),
    "non-hex hash": (lambda data: data.replace(data.split(b"\n")[1].rsplit(b",", 1)[1], b"z" * 64, 1),
                     "sha256='zzzz"),
    "non-UTF-8": (lambda data: data.replace(b"00000_000", b"00000_\xff\xfe0", 1), "not UTF-8"),
    "NUL byte": (lambda data: data.replace(b"00000_000", b"00000\x00000", 1), "NUL byte"),
    "huge field": (_first_path_to("a" * 100_000), "longer than 4096 bytes"),
    "10^5 rows for 4 images": (lambda data: data + data.split(b"\n", 1)[1] * 25_000, "more than 108 rows"),
    "ragged row": (lambda data: data.replace(b",no_face,", b",no_face,,", 1), "fields"),
    "duplicate path": (lambda data: data + data.split(b"\n")[1] + b"\n", "a second time"),
}


@pytest.fixture
def opened(monkeypatch) -> list[Path]:
    """Every path opened (os.open, open, os.scandir) while the test runs, resolved."""
    seen: list[Path] = []
    real_os_open, real_open, real_scandir = os.open, builtins.open, os.scandir

    def record(path) -> None:
        if isinstance(path, (str, bytes, os.PathLike)):
            seen.append(Path(os.fsdecode(path)).resolve())

    def os_open(path, *args, **kwargs):
        record(path)
        return real_os_open(path, *args, **kwargs)

    def open_(file, *args, **kwargs):
        record(file)
        return real_open(file, *args, **kwargs)

    def scandir(path="."):
        record(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "scandir", scandir)
    return seen


def _outside(opened: list[Path], root: Path) -> list[Path]:
    return [path for path in opened if not path.is_relative_to(root.resolve()) and path.suffix in (".png", ".csv", "")
            and "outside" in path.parts]


@pytest.mark.parametrize("case", list(HOSTILE_MANIFESTS))
def test_hostile_manifests_are_refused_in_one_line(case, tmp_path, capsys, opened):
    run = _fake_run(tmp_path / "run")
    _trap(tmp_path)
    change, message = HOSTILE_MANIFESTS[case]
    _rewrite_manifest(run, change)
    opened.clear()  # from here on, only what verify opens
    assert message in _refused(capsys, run)
    assert _outside(opened, run) == []


@pytest.mark.parametrize("link", ["image", "class folder", "manifest"])
def test_symbolic_links_out_of_the_folder_are_refused_without_reading_them(link, tmp_path, capsys, opened):
    run = _fake_run(tmp_path / "run")
    trap = _trap(tmp_path)
    target = {"image": run / "generate/dataset/00000/00000_000.png", "class folder": run / "generate/dataset/00001",
              "manifest": run / "generate/manifest.csv"}[link]
    if target.is_dir():
        shutil.rmtree(target)
        target.symlink_to(trap.parent, target_is_directory=True)
    else:
        if link == "manifest":
            shutil.copyfile(target, trap.with_name("manifest.csv"))
            trap = trap.with_name("manifest.csv")
        target.unlink()
        target.symlink_to(trap)
    before = trap.read_bytes()
    opened.clear()
    assert "symbolic link" in _refused(capsys, run)
    assert _outside(opened, run) == [] and trap.read_bytes() == before


def _export(run: Path, fmt: str) -> Path:
    from exfacegan.stages.export import export

    return export(run, fmt).out


@pytest.mark.parametrize("fmt", ["folder", "rec"])
def test_an_export_verifies_and_names_what_changed(fmt, tmp_path, capsys):
    out = _export(_fake_run(tmp_path / "run", per_class=3), fmt)
    rows = list(csv.DictReader((out / "samples.csv").read_text().splitlines()))
    sources = {row["source"]: row["sha256"] for row in rows}
    dataset = tmp_path / "run/generate/dataset"
    assert sources == {p.relative_to(dataset).as_posix(): _sha256(p) for p in dataset.rglob("*.png")}
    card = (out / "DATASET.md").read_text()
    assert f"- `samples.csv`: `{_sha256(out / 'samples.csv')}`" in card and "exfacegan verify" in card
    status, lines, _ = _verify(capsys, out)
    assert status == 0 and "all match" in lines[-1]

    changed = "00001/00001_002.png" if fmt == "folder" else "train.rec"
    data = bytearray((out / changed).read_bytes())
    data[len(data) // 2] ^= 1
    (out / changed).write_bytes(bytes(data))
    (out / "notes.txt").write_text("added")
    status, lines, _ = _verify(capsys, out)
    assert status == 1 and len(lines) == 3
    assert lines[0].startswith(f"altered: {changed} ") and lines[1] == "unlisted: notes.txt"


HOSTILE_CARDS = {
    "10^7 images claimed": (lambda text: text.replace("| images | 6 |", "| images | 10000000 |"), "claims 10000000"),
    "non-hex hash": (lambda text: text.replace("- `samples.csv`: `", "- `samples.csv`: `zz", 1), "is not a `file`"),
    "path out": (lambda text: text.replace("- `samples.csv`:", "- `../samples.csv`:", 1), "is not a `file`"),
    "NUL byte": (lambda text: text + "\x00", "NUL byte"),
    "no hash list": (lambda text: text.replace("SHA-256 of the exported files:", "files:"), "lists no SHA-256"),
}


@pytest.mark.parametrize("case", list(HOSTILE_CARDS))
def test_hostile_cards_are_refused_in_one_line(case, tmp_path, capsys):
    out = _export(_fake_run(tmp_path / "run", per_class=3), "folder")
    change, message = HOSTILE_CARDS[case]
    card = out / "DATASET.md"
    card.write_text(change(card.read_text()))
    assert message in _refused(capsys, out)


def test_a_card_that_is_not_utf8_is_refused(tmp_path, capsys):
    out = _export(_fake_run(tmp_path / "run"), "folder")
    (out / "DATASET.md").write_bytes(b"\xff\xfe" + (out / "DATASET.md").read_bytes())
    assert "not UTF-8" in _refused(capsys, out)


_VALID = ("path,class,reference,side,k,attempt,found,rejected,sha256\n"
          f"00000/00000_000.png,0,0,same,0,-1,1,,{'a' * 64}\n,1,0,other,3,5,0,no_face,\n").encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=600),
    st.tuples(st.integers(0, len(_VALID)), st.integers(0, 40), st.binary(max_size=40)).map(
        lambda edit: _VALID[: edit[0]] + edit[2] + _VALID[edit[0] + edit[1]:]),
))
def test_the_manifest_reader_returns_checked_rows_or_one_line(tmp_path, data):
    path = tmp_path / "manifest.csv"
    path.write_bytes(data)
    try:
        rows = read_manifest(path)
    except DataError as error:
        assert "\n" not in str(error) and str(error)
        return
    for row in rows:
        assert set(HEADER[:-1]) <= row.keys()
        assert not row["path"].startswith("/") and ".." not in row["path"].split("/")
        assert row.get("sha256", "") == "" or len(row["sha256"]) == 64


def test_weights_must_have_the_recorded_hash(tmp_path):
    from exfacegan.stages.verify import check_weights

    weights = tmp_path / "G.pkl"
    weights.write_bytes(b"weights")
    cfg = OmegaConf.create({"gan": {"network": {"_target_": "x", "source": str(weights)}}, "align": {"size": 112}})
    recorded = {"checkpoints": {"gan.network.source": {"path": str(weights), "sha256": _sha256(weights)}}}
    check_weights(cfg, recorded, filter_active=False)
    weights.write_bytes(b"weights, changed")
    with pytest.raises(CheckpointError, match="gan.network.source: .* not the weights this run was made with"):
        check_weights(cfg, recorded, filter_active=False)
    with pytest.raises(CheckpointError, match="records no SHA-256"):
        check_weights(cfg, {"checkpoints": {}}, filter_active=False)


# ---------------------------------------------------------------------------------------------------------------
# The app itself: one smoke run shared by the module, copied by each test.

SMALL = ["experiment=smoke", "logger=none", "sample.num_samples=64", "label.num_references=6", "sampling.per_class=8",
         "cache_dir=null"]
GENERATE = ["gan.batch_size=8", "generate.references_per_chunk=1"]


def _app(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    result = subprocess.run([sys.executable, "-m", "exfacegan.run", *SMALL, *overrides], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """A run directory with finished sample, label, fit and generate stages."""
    root = tmp_path_factory.mktemp("smoke")
    _app("stages=[sample,label,fit,generate]", *GENERATE, f"run_dir={root / 'run'}", cwd=root)
    return root / "run"


def _copy(run: Path, destination: Path, *, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(run, destination, ignore=shutil.ignore_patterns(*without))
    return destination


@pytest.mark.slow
def test_the_manifest_hashes_are_those_of_the_files(smoke):
    rows = list(csv.DictReader((smoke / "generate/manifest.csv").read_text().splitlines()))
    assert rows and all(row["sha256"] == _sha256(smoke / "generate/dataset" / row["path"]) for row in rows)
    progress = [row for record in (smoke / "generate/progress").glob("*.csv")
                for row in csv.DictReader(record.read_text().splitlines())]
    assert {row["path"]: row["sha256"] for row in progress if row["path"]} == {row["path"]: row["sha256"] for row in rows}


@pytest.mark.slow
def test_verify_passes_on_a_fresh_run_and_regenerates_three_classes(smoke, capsys):
    status, out, _ = _verify(capsys, smoke, "--regenerate", 3, "--seed", 1)
    assert status == 0, out
    assert "all match" in out[0] and out[-1].startswith("regenerated classes ") and "bytes (SHA-256)" in out[-1]
    assert out[-1].endswith("all match") and len(out) == 2


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["boundary.margin", "sampling.seed"])
def test_regenerate_names_the_classes_after_the_config_is_changed(setting, smoke, tmp_path, capsys):
    run = _copy(smoke, tmp_path / "run")
    cfg = OmegaConf.load(run / "config.yaml")
    OmegaConf.update(cfg, setting, OmegaConf.select(cfg, setting) + 1)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    status, out, _ = _verify(capsys, run, "--regenerate", 3)
    assert status == 1 and "all match" in out[0]  # the files still match their manifest
    named = [line for line in out if line.startswith("class ")]
    assert len(named) == 3 and all(" differs: " in line for line in named)
    chosen = out[-1].split("regenerated classes ")[1].split(" (seed")[0].split(", ")
    assert [line.split()[1] for line in named] == chosen
    if setting == "sampling.seed":
        assert all("differ in bytes" in line for line in named)


@pytest.mark.slow
def test_regenerate_refuses_weights_other_than_the_recorded_ones(smoke, tmp_path, capsys):
    run = _copy(smoke, tmp_path / "run")
    weights = tmp_path / "align.bin"
    weights.write_bytes(b"recorded weights")
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.align.path = str(weights)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    provenance = json.loads((run / "provenance.json").read_text())
    provenance["checkpoints"]["align.path"] = {"path": str(weights), "sha256": _sha256(weights)}
    (run / "provenance.json").write_text(json.dumps(provenance))
    weights.write_bytes(b"other weights")
    line = _refused(capsys, run, "--regenerate", 1)
    assert "align.path" in line and "not the weights this run was made with" in line


@pytest.mark.slow
def test_regenerate_reads_a_generator_pickle_only_with_its_recorded_hash(official_names, tmp_path, capsys):
    import torch

    from exfacegan.gans.stylegan2 import Generator

    config = {"z_dim": 64, "c_dim": 0, "w_dim": 64, "img_resolution": 64, "img_channels": 3,
              "mapping_kwargs": {"num_layers": 4}, "channel_base": 2048, "channel_max": 64, "num_fp16_res": 0,
              "conv_clamp": 256}
    torch.manual_seed(0)
    weights = _write_official(tmp_path / "G.pkl", official_names, config, Generator(**config), tmp_path / "marker")
    run = tmp_path / "run"
    _app("stages=[sample,label,fit,generate]", *GENERATE, "label.num_references=3",
         f"gan.network={{_target_:exfacegan.gans.load_generator,source:'{weights}'}}", f"run_dir={run}", cwd=tmp_path)
    assert json.loads((run / "provenance.json").read_text())["checkpoints"]["gan.network.source"]["sha256"] == \
        _sha256(weights)
    status, out, _ = _verify(capsys, run, "--regenerate", 2)
    assert status == 0 and out[-1].endswith("all match"), out
    weights.write_bytes(weights.read_bytes() + b"\0")  # still the same network to the unpickler, other bytes
    line = _refused(capsys, run, "--regenerate", 2)
    assert "gan.network.source" in line and "not the weights this run was made with" in line


@pytest.mark.slow
def test_verify_passes_on_a_killed_and_resumed_run_and_a_sharded_run(smoke, tmp_path, capsys):
    from test_end_to_end import _kill_when

    resumed = _copy(smoke, tmp_path / "resumed", without=("generate",))
    command = [sys.executable, "-m", "exfacegan.run", *SMALL, "stages=[generate]", *GENERATE, f"run_dir={resumed}"]
    _kill_when(command, tmp_path, lambda: sum(1 for _ in (resumed / "generate.partial").rglob("*.png")), 40)
    _app("stages=[generate]", *GENERATE, f"run_dir={resumed}", cwd=tmp_path)

    sharded = _copy(smoke, tmp_path / "sharded", without=("generate",))
    for shard in (1, 0):
        _app("stages=[generate]", *GENERATE, "generate.num_shards=2", f"generate.shard={shard}",
             f"run_dir={sharded}", cwd=tmp_path)
    _app("stages=[merge]", f"run_dir={sharded}", cwd=tmp_path)

    expected = (smoke / "generate/manifest.csv").read_bytes()
    for run in (resumed, sharded):
        assert (run / "generate/manifest.csv").read_bytes() == expected
        status, out, _ = _verify(capsys, run, "--regenerate", 2)
        assert status == 0 and len(out) == 2, out


def test_pixels_are_compared_within_the_tolerance_when_the_environment_differs(tmp_path):
    from exfacegan.stages.verify import PIXEL_TOLERANCE, _class_difference

    base = np.random.default_rng(0).integers(20, 200, (8, 8, 3), dtype=np.uint8)
    disk, fresh = tmp_path / "run", tmp_path / "fresh"
    for folder, image in ((disk / "dataset/00000", base), (fresh / "00000", base + 1)):
        folder.mkdir(parents=True)
        Image.fromarray(image).save(folder / "00000_000.png")
    expected = {"00000/00000_000.png": _sha256(disk / "dataset/00000/00000_000.png")}
    rendered = {"00000/00000_000.png": _sha256(fresh / "00000/00000_000.png")}
    assert "differ in bytes" in _class_difference(rendered, expected, fresh, disk, "dataset", True)
    assert _class_difference(rendered, expected, fresh, disk, "dataset", False) is None  # 1 <= tolerance
    Image.fromarray(base + PIXEL_TOLERANCE + 1).save(fresh / "00000/00000_000.png")
    assert "differ by more than" in _class_difference(rendered, expected, fresh, disk, "dataset", False)


def test_a_resumed_or_sharded_stage_renders_in_the_batches_it_started_with(tmp_path):
    # A render's last bits can depend on the other images of its batch (measured on the smoke generator:
    # batch 5 instead of 16 changes 7 of 48 PNGs), so plan.json fixes the batch size with the chunking.
    from exfacegan.stages.generate import GenerateSpec, generate
    from exfacegan.stages.offsets import OffsetSpec
    from toys import ToyAligner, ToyGenerator

    generator, batches = ToyGenerator(), []
    forward = generator.synthesis.forward
    generator.synthesis.forward = lambda ws, noise_mode="const": (batches.append(len(ws)), forward(ws, noise_mode))[1]
    rng = np.random.default_rng(0)
    normals = rng.standard_normal((4, generator.w_dim)).astype(np.float32)
    latents = rng.standard_normal((4, generator.w_dim)).astype(np.float32)
    for shard, batch_size in ((0, 4), (1, 3)):
        batches.clear()
        spec = GenerateSpec(offsets=OffsetSpec(per_class=3, max_off=1.0), batch_size=batch_size,
                            references_per_chunk=2, shard=shard, num_shards=2)
        generate(tmp_path, generator, ToyAligner(), reference_latents=latents, normals=normals, spec=spec)
        assert batches == [4, 4, 4]  # one chunk: 2 references x 2 sides x 3 slots, in batches of the first call's 4
