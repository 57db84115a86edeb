"""Time pair scoring and the verification metrics on a synthetic dataset of paper-like shape.

    python benchmarks/bench_metrics.py --classes 10000 --per-class 50 --dim 512

The paper's dataset: 10,000 identities x 50 images (both sides), 512-d iresnet embeddings.
Prints seconds per step and the peak resident memory.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import psutil
import torch

from exfacegan.metrics.verification import pair_scores, verification_metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=2000)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--max-impostor-pairs", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_num_threads(2)

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(args.classes), args.per_class)
    centres = rng.standard_normal((args.classes, args.dim), dtype=np.float32)
    embeddings = centres[labels] + rng.standard_normal((len(labels), args.dim), dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    del centres
    process = psutil.Process()
    base = process.memory_info().rss

    start = time.perf_counter()
    scores = pair_scores(embeddings, labels, max_impostor_pairs=args.max_impostor_pairs, both_sides=True)
    scored = time.perf_counter()
    metrics = verification_metrics(scores.genuine, scores.impostor)
    done = time.perf_counter()
    peak = process.memory_info().rss
    print(f"{len(labels):,} embeddings of {args.dim}-d, {args.classes:,} classes: "
          f"{len(scores.genuine):,} genuine, {len(scores.impostor):,} impostor, {len(scores.both_sides):,} both-sides pairs")
    print(f"pair_scores {scored - start:.2f} s, verification_metrics {done - scored:.2f} s, "
          f"RSS above the embeddings {(peak - base) / 2**20:.0f} MiB (at the end)")
    print(f"EER {metrics['eer']:.4f}  FMR100 {metrics['fmr100']:.4f}  FDR {metrics['fdr']:.3f}")


if __name__ == "__main__":
    main()
