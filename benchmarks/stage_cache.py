"""What the verified stage cache costs: recording a stage (hash every file), storing it (copy), and reusing it
(copy, then hash the copies), on a folder of generated-size JPEGs and on a run's stages.

    python benchmarks/stage_cache.py [--images 5000] [--run outputs/runs/<time>] [--target 500000]

Synthetic images: 112×112 RGB JPEGs at quality 95 (what a generate stage writes with image_format=jpg), in
folders of 50. Prints files/s and MB/s of each step and the time it would take for --target such files. The
files were just written, so they are read from the page cache: a cold disk adds its own read time.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from exfacegan.contents import WORKERS, check_hashes, copy_files, list_files, record_contents


def write_jpegs(folder: Path, count: int, per_class: int = 50) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:112, 0:112]
    for index in range(count):
        smooth = (np.sin(x / (7 + index % 5)) + np.cos(y / (9 + index % 7)))[..., None] * 60 + 128
        pixels = np.clip(smooth + rng.normal(0, 12, (112, 112, 3)), 0, 255).astype(np.uint8)
        path = folder / "dataset" / f"{index // per_class:05d}" / f"{index % per_class:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=95)


def measure(stage: Path, scratch: Path, target: int | None) -> None:
    names = list_files(stage)
    size = sum((stage / name).stat().st_size for name in names)
    start = time.perf_counter()
    record = record_contents(stage, stage="bench", fingerprint="bench", computed_in=stage)
    recorded = time.perf_counter() - start
    start = time.perf_counter()
    copy_files(stage, scratch / "entry", names, read_only=True)
    stored = time.perf_counter() - start
    start = time.perf_counter()
    copy_files(scratch / "entry", scratch / "fetched", names)
    copied = time.perf_counter() - start
    assert check_hashes(scratch / "fetched", record) is None
    fetched = time.perf_counter() - start
    print(f"{stage}: {len(names)} files, {size / len(names) / 1e3:.1f} kB each, {WORKERS} threads")
    for step, seconds in [("record (hash)", recorded), ("store (copy)", stored), ("fetch copy", copied),
                          ("fetch (copy + hash)", fetched)]:
        rate = len(names) / seconds
        estimate = f"  -> {target:,} files: {target / rate / 60:6.1f} min" if target else ""
        print(f"  {step:>20}: {seconds:7.3f} s  {rate:9.0f} files/s  {size / seconds / 1e6:7.1f} MB/s{estimate}")
    shutil.rmtree(scratch / "entry")
    shutil.rmtree(scratch / "fetched")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--run", type=Path, default=None, help="also measure each stage folder of this run")
    parser.add_argument("--target", type=int, default=500_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="exfacegan-cache-bench-") as tmp:
        stage = Path(tmp) / "generate"
        write_jpegs(stage, args.images)
        (Path(tmp) / "scratch").mkdir()
        measure(stage, Path(tmp) / "scratch", args.target)
        for folder in sorted(p for p in (args.run.iterdir() if args.run else []) if (p / "fingerprint.json").is_file()):
            copy = Path(tmp) / "run" / folder.name
            shutil.copytree(folder, copy)
            measure(copy, Path(tmp) / "scratch", None)


if __name__ == "__main__":
    main()
