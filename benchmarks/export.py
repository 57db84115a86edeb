"""Time `exfacegan export` in each format on a run, and one pass of the trainer's reader over each export.

    python benchmarks/export.py outputs/runs/<time> [--shard-size 1000]

Prints images/s of the export (read the generated files, write the format, hash, card) and of the read pass
(decode every image to uint8 [3, 112, 112]; shards: the training stream, one DataLoader process).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from exfacegan.stages.export import FORMATS, export
from exfacegan.train.data import open_dataset, train_loader


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            result = export(args.run_dir, fmt, Path(tmp) / fmt, shard_size=args.shard_size)
            dataset = open_dataset(result.out)
            start = time.perf_counter()
            if fmt == "webdataset":
                loader = train_loader(dataset, np.arange(len(dataset)), 1, num_workers=0)
                count = sum(len(labels) for _, labels in loader)
            else:
                count = sum(1 for index in range(len(dataset)) if dataset[index] is not None)
            read = time.perf_counter() - start
            print(f"{fmt:>10}: {result.images} images, {result.classes} identities; export {result.seconds:.2f} s "
                  f"({result.images / result.seconds:.0f} images/s); read pass {count / read:.0f} images/s")


if __name__ == "__main__":
    main()
