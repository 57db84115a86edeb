"""`exfacegan export`: RecordIO, WebDataset and folder exports of a run's dataset, the dataset card, the
trainer's readers of all three formats, and the one-line refusals.

The fast tests use a hand-made run folder (3 identities of 3, 2 and 4 JPEGs, known metrics and hashes); the
slow one exports a real smoke run and reads it back through the trainer's reader and loader."""

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
import yaml
from PIL import Image
from torch.utils.data import DataLoader

from exfacegan.cli.main import main
from exfacegan.data import recordio
from exfacegan.data.image_folder import ImageFolderDataset
from exfacegan.data.recordio import RecordIODataset
from exfacegan.data.shards import ShardDataset, ShardStream
from exfacegan.stages.export import export
from exfacegan.train.data import open_dataset, train_loader

COUNTS = {"00000": 3, "00001": 2, "00002": 4}
METRICS = {"eer": 0.123456789, "fmr100": 0.25, "fmr1000": 0.5, "fdr": 3.25, "d_prime": 1.875, "images": 9}
CHECKPOINT_SHA = "ab" * 32
CONFIG = {"gan": {"network": {"_target_": "exfacegan.gans.load_generator", "source": "stylegan2-ada-ffhq-1024"}},
          "embedder": {"checkpoint": "/weights/backbone.pth",
                       "network": {"_target_": "exfacegan.embedders.load_iresnet_embedder", "arch": "iresnet50"}},
          "sample": {"num_samples": 4321}, "label": {"threshold": "median"}}


@pytest.fixture
def run(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    rng = np.random.default_rng(0)
    for name, count in COUNTS.items():
        (run_dir / "generate" / "dataset" / name).mkdir(parents=True)
        for k in range(count):
            pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(run_dir / "generate" / "dataset" / name / f"{name}_{k:03d}.jpg")
    (run_dir / "generate" / "manifest.csv").write_text("path,class\n00000/00000_000.jpg,0\n")
    (run_dir / "generate" / "stats.json").write_text(json.dumps({"images": 9, "rejected_no_face": 7}))
    (run_dir / "analyze").mkdir()
    (run_dir / "analyze" / "metrics.json").write_text(json.dumps(METRICS))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (run_dir / "provenance.json").write_text(json.dumps({
        "exfacegan_version": "0.1.0", "git_revision": "f00d", "command": ["run.py", "experiment=x"],
        "checkpoints": {"embedder.checkpoint": {"path": "/weights/backbone.pth", "sha256": CHECKPOINT_SHA}}}))
    return run_dir


def _files(run_dir: Path) -> list[tuple[str, int, Path]]:
    """(folder, class, file) of the run's images in the order an image-folder reader numbers them."""
    folders = sorted(COUNTS)
    return [(name, folders.index(name), path) for name in folders
            for path in sorted((run_dir / "generate" / "dataset" / name).iterdir())]


def _pixels(path_or_bytes) -> np.ndarray:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    return np.asarray(Image.open(source).convert("RGB"))


def test_rec_export_holds_every_image_byte_for_byte(run, tmp_path):
    result = export(run, "rec", tmp_path / "rec")
    assert (result.images, result.classes) == (9, 3)
    assert (tmp_path / "rec" / "property").read_text() == "3,24,24\n"
    dataset = open_dataset(tmp_path / "rec", size=24)
    assert isinstance(dataset, RecordIODataset) and len(dataset.classes) == 3
    files = _files(run)
    assert dataset.labels.tolist() == [label for _, label, _ in files]
    for index, (_, _, path) in enumerate(files):
        header, data = dataset.read(index)
        assert data == path.read_bytes() and header.id == index + 1
    rows = list(csv.DictReader((tmp_path / "rec" / "samples.csv").read_text().splitlines()))
    expected = [(str(i + 1), f"{folder}/{path.name}") for i, (folder, _, path) in enumerate(files)]
    assert [(r["key"], r["source"]) for r in rows] == expected
    assert (tmp_path / "rec" / "manifest.csv").read_bytes() == (run / "generate" / "manifest.csv").read_bytes()


def test_webdataset_export_round_trips_and_streams_each_rank_its_shards(run, tmp_path):
    export(run, "webdataset", tmp_path / "wds", shard_size=4)
    shards = sorted((tmp_path / "wds").glob("*.tar"))
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    members = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            members.update({m.name: (shard.name, tar.extractfile(m).read()) for m in tar})
    files = _files(run)
    for index, (folder, label, path) in enumerate(files):
        shard, data = members[f"{folder}/{path.stem}.jpg"]
        assert data == path.read_bytes() and members[f"{folder}/{path.stem}.cls"][1] == str(label).encode()
        assert shard == shards[index // 4].name
    reader = webdataset.WebDataset([str(s) for s in shards], shardshuffle=False).to_tuple("__key__", "jpg", "cls")
    assert [(key, data, int(cls)) for key, data, cls in reader] == [
        (f"{folder}/{path.stem}", path.read_bytes(), label) for folder, label, path in files]
    dataset = open_dataset(tmp_path / "wds", size=24)
    assert isinstance(dataset, ShardDataset) and dataset.labels.tolist() == [label for _, label, _ in files]
    image, label = dataset[5]
    assert label == files[5][1] and np.array_equal(image.permute(1, 2, 0).numpy(), _pixels(files[5][2]))

    expected = sorted((label, _pixels(path).tobytes()) for _, label, path in files)
    stream = ShardStream(dataset.shards, set(dataset.keys), 24, steps=3, local_batch=3)
    seen = sorted((int(label), image.permute(1, 2, 0).numpy().tobytes()) for image, label in stream)
    assert seen == expected  # one epoch of 3 x 3 = every image once
    by_rank = []
    for rank in range(2):  # rank 0 streams shards 0 and 2 (8 images), rank 1 shard 1 (4 images, repeated)
        stream = ShardStream(dataset.shards, set(dataset.keys), 24, steps=2, local_batch=3, rank=rank, world_size=2)
        batches = list(DataLoader(stream, batch_size=3, drop_last=True))
        assert len(batches) == 2
        by_rank.append({int(x) for _, labels in batches for x in labels})
    assert by_rank[1] <= {files[i][1] for i in range(4, 8)} and by_rank[0] <= {files[i][1] for i in (0, 1, 2, 3, 8)}


def test_stream_loader_reads_only_training_images_for_the_given_steps(run, tmp_path):
    export(run, "webdataset", tmp_path / "wds", shard_size=2)
    dataset = open_dataset(tmp_path / "wds", size=24)
    held_out = {1, 6}
    train = np.array([i for i in range(9) if i not in held_out])
    loader = train_loader(dataset, train, 2, num_workers=2, seed=3)
    assert len(loader) == 3
    loader.sampler.set_epoch(0)
    first = [b for b in loader]
    loader.sampler.set_epoch(0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, loader))  # an epoch is reproducible
    held_images = {_pixels(_files(run)[i][2]).tobytes() for i in held_out}
    assert len(first) == 3 and all(len(labels) == 2 for _, labels in first)
    assert not held_images & {image.permute(1, 2, 0).numpy().tobytes() for images, _ in first for image in images}


def test_folder_export_links_the_images(run, tmp_path):
    export(run, "folder", tmp_path / "folder")
    for folder, _, path in _files(run):
        copy = tmp_path / "folder" / folder / path.name
        assert copy.read_bytes() == path.read_bytes() and os.path.samefile(copy, path)
    exported = ImageFolderDataset(tmp_path / "folder", size=24)
    assert exported.classes == sorted(COUNTS) and len(exported) == 9


def test_card_holds_the_runs_numbers(run, tmp_path):
    export(run, "rec", tmp_path / "rec")
    card = (tmp_path / "rec" / "DATASET.md").read_text()
    assert "| identities | 3 |" in card and "| images | 9 |" in card
    assert "| images per identity (min / mean / max) | 2 / 3.00 / 4 |" in card
    assert "| EER | 0.123457 |" in card and "| d′ | 1.875 |" in card and "| FMR1000 | 0.5 |" in card
    assert "| rejected_no_face | 7 |" in card
    assert "NVIDIA Source Code License" in card and "stylegan2-ada-ffhq-1024" in card
    assert "iresnet50 from /weights/backbone.pth" in card and "non-commercial" in card
    assert CHECKPOINT_SHA in card and "| git_revision | f00d |" in card
    rec_sha = hashlib.sha256((tmp_path / "rec" / "train.rec").read_bytes()).hexdigest()
    assert f"- `train.rec`: `{rec_sha}`" in card
    settings = card.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(settings) == CONFIG


def test_card_of_an_unanalysed_gan_control_run(run, tmp_path):
    (run / "analyze" / "metrics.json").unlink()
    config = dict(CONFIG, gan={"network": {"_target_": "exfacegan.gans.load_generator", "source": str(tmp_path)}})
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    export(run, "folder", tmp_path / "folder")
    card = (tmp_path / "folder" / "DATASET.md").read_text()
    assert "GAN-Control" in card and "UNVERIFIED" in card and "was not analysed" in card


@pytest.mark.parametrize("case, message", [
    ("missing run", "does not exist"), ("no dataset", "no finished generate stage"),
    ("existing out", "already exists"), ("unknown format", "unknown --format 'zip'"), ("bad shards", "--shard-size")])
def test_refusals_are_one_line_and_write_nothing(run, tmp_path, capsys, case, message):
    out = tmp_path / "out"
    args = {"missing run": [str(tmp_path / "nope")], "no dataset": [str(tmp_path)], "existing out": [str(run)],
            "unknown format": [str(run), "--format", "zip"], "bad shards": [str(run), "--shard-size", "0"]}[case]
    if case == "existing out":
        out.mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["export", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("exfacegan: error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_failed_export_leaves_nothing(run, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(recordio, "write_face_records", fail)
    with pytest.raises(OSError):
        export(run, "rec", tmp_path / "rec")
    assert not (tmp_path / "rec").exists() and not (tmp_path / "rec.partial").exists()


SMOKE = ["experiment=smoke", "logger=none", "cache_dir=null", "sample.num_samples=32", "label.num_references=4",
         "sampling.per_class=4", "dataset.image_format=jpg", "stages=[sample,label,fit,generate]"]


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, check=False,
                            timeout=600, env={**os.environ, "WANDB_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_rec_export_of_a_smoke_run_feeds_the_trainer_what_the_image_folder_does(tmp_path):
    """A real run's dataset exported to .rec: the trainer's reader (`open_dataset`, as `data.root` picks it) and its
    loader give the image folder's images, labels and order, so training on either is the same training."""
    _run("exfacegan.run", *SMOKE, f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert main(["export", str(tmp_path / "run"), "--format", "rec", "--out", str(tmp_path / "rec")]) == 0
    folder = open_dataset(tmp_path / "run" / "generate" / "dataset")
    rec = open_dataset(tmp_path / "rec")
    assert isinstance(rec, RecordIODataset) and isinstance(folder, ImageFolderDataset)
    assert len(rec) == len(folder) == 32 and len(rec.classes) == len(folder.classes) == 8
    assert np.array_equal(rec.labels, folder.labels)
    assert all(torch.equal(rec[i][0], folder[i][0]) for i in range(len(rec)))
    batches = [next(iter(train_loader(data, np.arange(32), 8, num_workers=0, seed=0))) for data in (rec, folder)]
    assert all(torch.equal(a, b) for a, b in zip(*batches))


@pytest.mark.slow
def test_torchrun_streams_webdataset_shards_with_equal_steps(run, tmp_path):
    export(run, "webdataset", tmp_path / "wds", shard_size=4)  # 3 shards: rank 0 reads 0 and 2, rank 1 reads 1
    args = ["recipe=smoke", "logger=none", "batch_size=4", "epochs=2", "data.num_workers=1",
            "eval.holdout_fraction=0", f"data.root={tmp_path / 'wds'}", f"out_dir={tmp_path / 'two'}"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "exfacegan.train", *args], capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "two" / "eval.json").read_text())["epochs"]
    # 9 images, global batch 4: 2 steps per epoch on both processes
    assert [(r["world_size"], r["steps_per_epoch"], r["step"]) for r in records] == [(2, 2, 2), (2, 2, 4)]
