"""`exfacegan export <run_dir> --format rec|webdataset|folder [--out DIR]`: a run's generated dataset in a format
FR trainers read directly, with its dataset card (DATASET.md).

- rec: MXNet RecordIO `train.rec`, `train.idx`, `property` (insightface's arcface_torch: `config.rec = DIR`);
- webdataset: tar shards `shard-NNNNNN.tar` of `--shard-size` samples, `<key>.<jpg|png>` + `<key>.cls`;
- folder: a copy of the image folder (hard links where the file system allows).

Classes are the identity folders in sorted order (class i = the i-th folder, as the trainer's image-folder
reader numbers them), images in sorted order; the encoded images are stored as the generate stage wrote them.
Every export also holds `samples.csv` (key, class, folder, source file, SHA-256 of the image bytes) and the generate
stage's manifest.csv; the card lists the SHA-256 of every top-level file (`exfacegan verify <out>` checks them).
Everything is written into `<out>.partial` and renamed when complete. The readers and writers are imported
when exporting, so that the `exfacegan` command line starts without loading torch.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exfacegan.errors import ConfigError, DataError

if TYPE_CHECKING:
    from exfacegan.data.image_folder import ImageFolderDataset

FORMATS = ("rec", "webdataset", "folder")
USAGE = {
    "rec": "MXNet RecordIO as insightface writes it: `train.rec` + `train.idx` (images are keys 1..N, IRHeader "
           "label = class), `property` (`classes,112,112`). arcface_torch: `config.rec = \"<this folder>\"`, "
           "`config.num_classes` and `config.num_image` from the table above. exfacegan: "
           "`python -m exfacegan.train data.root=<this folder>`.",
    "webdataset": "WebDataset tar shards `shard-NNNNNN.tar`; each sample is `<key>.<jpg|png>` (the image) and "
                  "`<key>.cls` (the class index). `webdataset.WebDataset(\"<folder>/shard-{000000..NNNNNN}.tar\")`, "
                  "or `python -m exfacegan.train data.root=<this folder>` (streams the shards, each process its own).",
    "folder": "An image folder `<identity>/<image>` (class i = the i-th folder in sorted order): "
              "`python -m exfacegan.train data.root=<this folder>` or any ImageFolder reader.",
}


@dataclass(frozen=True)
class ExportResult:
    out: Path
    images: int
    classes: int
    seconds: float


def check_export(run_dir: Path, fmt: str, out: Path, shard_size: int) -> Path:
    """The run's dataset folder, after checking every argument (nothing is written)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist")
    dataset = run_dir / "generate" / "dataset"
    if not dataset.is_dir():
        raise DataError(f"{run_dir} has no finished generate stage (no {dataset}); run or merge it first")
    if out.exists():
        raise ConfigError(f"--out {out} already exists; remove it or choose another folder")
    return dataset


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None, *, shard_size: int = 1000) -> ExportResult:
    """Export run_dir's generated dataset as `fmt` into `out` (default `<run_dir>/export/<fmt>`)."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "export" / fmt
    dataset_dir = check_export(run_dir, fmt, out, shard_size)
    from exfacegan.data.image_folder import ImageFolderDataset

    start = time.perf_counter()
    dataset = ImageFolderDataset(dataset_dir)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # an export interrupted before; it is rewritten from the start
    partial.mkdir(parents=True)
    try:
        _write_export(run_dir, fmt, partial, dataset, shard_size)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, out)
    return ExportResult(out, len(dataset), len(dataset.classes), time.perf_counter() - start)


def _write_export(run_dir: Path, fmt: str, partial: Path, dataset: ImageFolderDataset, shard_size: int) -> None:
    from exfacegan.data.card import dataset_card
    from exfacegan.data.manifest import SAMPLES_FIELDS
    from exfacegan.weights import sha256_of

    keys = _write_format(fmt, partial, dataset, shard_size)
    with open(partial / "samples.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SAMPLES_FIELDS)
        for key, label, path in zip(keys, dataset.labels, dataset.paths):
            writer.writerow([key, int(label), dataset.classes[label], path.relative_to(dataset.root).as_posix(),
                             sha256_of(path)])
    if (run_dir / "generate" / "manifest.csv").is_file():
        shutil.copyfile(run_dir / "generate" / "manifest.csv", partial / "manifest.csv")
    hashed = sorted(p for p in partial.rglob("*") if p.is_file() and p.parent == partial)
    encodings = sorted({p.suffix[1:].lower() for p in dataset.paths})
    card = dataset_card(run_dir, fmt=fmt, labels=dataset.labels, image_encoding=", ".join(encodings) +
                        " as written by the generate stage (not re-encoded)", usage=USAGE[fmt],
                        files={p.name: sha256_of(p) for p in hashed})
    (partial / "DATASET.md").write_text(card)


def _write_format(fmt: str, out: Path, dataset: ImageFolderDataset, shard_size: int) -> list[str]:
    """Write the images in `fmt`; returns each image's key in that format."""
    from PIL import Image

    from exfacegan.data.recordio import write_face_records
    from exfacegan.data.shards import write_shards

    if fmt == "rec":
        groups = ((dataset.paths[i].read_bytes() for i in dataset.class_indices(label))
                  for label in range(len(dataset.classes)))
        with Image.open(dataset.paths[0]) as first:
            write_face_records(out, groups, first.height)
        return [str(key) for key in range(1, len(dataset) + 1)]
    names = [f"{dataset.classes[label]}/{path.name}" for label, path in zip(dataset.labels, dataset.paths)]
    if fmt == "webdataset":
        keys = [name.rpartition(".")[0].replace(".", "_") for name in names]
        write_shards(out, list(zip(keys, dataset.labels.tolist(), dataset.paths)), shard_size)
        return keys
    for folder in dataset.classes:
        (out / folder).mkdir()
    for name, path in zip(names, dataset.paths):
        _link_or_copy(path, out / name)
    return names
