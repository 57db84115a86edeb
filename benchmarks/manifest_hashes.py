"""What the manifest's sha256 column costs the generate stage, and what `exfacegan verify` costs.

    python benchmarks/manifest_hashes.py RUN_DIR [--repeats 5]

RUN_DIR: a run with a finished generate stage (e.g. `python -m exfacegan.run experiment=smoke logger=none
run_dir=RUN_DIR`). The generate stage hashes each image's encoded bytes in memory (hashlib.sha256) before
writing them; this times exactly that over the run's own images (read into memory first, so the disk is not
timed), and compares it with the generate stage's wall time from RUN_DIR/timings.json. It then times a full
`exfacegan verify RUN_DIR` re-hash (reads from disk, page cache warm).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from exfacegan.stages.verify import check_files, locate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    images = [p.read_bytes() for p in sorted((args.run_dir / "generate" / "dataset").rglob("*")) if p.is_file()]
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        for data in images:
            hashlib.sha256(data).hexdigest()
        best = min(best, time.perf_counter() - start)
    generate_s = json.loads((args.run_dir / "timings.json").read_text())["generate"]["seconds"]
    size = sum(map(len, images))
    print(f"{len(images)} images, {size / len(images) / 1024:.1f} KiB each on average")
    print(f"hashing in memory: {best * 1e3:.2f} ms in all, {best / len(images) * 1e6:.1f} µs per image "
          f"({size / best / 2**20:.0f} MiB/s)")
    print(f"generate stage: {generate_s:.2f} s -> hashing is {100 * best / generate_s:.3f}% of it")
    start = time.perf_counter()
    outcome = check_files(locate(args.run_dir))
    verify_s = time.perf_counter() - start
    print(f"verify (re-hash from disk): {verify_s:.3f} s for {outcome.checked} files "
          f"({outcome.checked / verify_s:.0f} files/s), clean={outcome.clean}")


if __name__ == "__main__":
    main()
