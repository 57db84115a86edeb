"""Time `exfacegan export` in each format on a run, and one pass of the trainer's reader over each export.

    python benchmarks/export.py outputs/runs/<time> [--shard-size 1000] [--batch-size 50]

Prints images/s of the export (read the generated files, write the format, hash, card) and of the read pass
(the trainer's loader, one process, batches of --batch-size: decode to uint8 [3, 112, 112] and stack;
WebDataset: the training stream).
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
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            result = export(args.run_dir, fmt, Path(tmp) / fmt, shard_size=args.shard_size)
            dataset = open_dataset(result.out)
            start = time.perf_counter()
            loader = train_loader(dataset, np.arange(len(dataset)), args.batch_size, num_workers=0)
            count = sum(len(labels) for _, labels in loader)
            read = time.perf_counter() - start
            print(f"{fmt:>10}: {result.images} images, {result.classes} identities; export {result.seconds:.2f} s "
                  f"({result.images / result.seconds:.0f} images/s); read pass {count / read:.0f} images/s")


if __name__ == "__main__":
    main()
