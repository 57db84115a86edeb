"""Boundary fitting at paper scale: wall time, peak memory and agreement with LinearSVC, per solver.

    python benchmarks/fit.py [--sizes 2000 5000 11000] [--references R] [--solvers svm batched ridge logistic]
        [--svm-sample 100] [--device cpu|cuda] [--threads 2] [--noise 0.5] [--dim 512]

Data (synthetic, deterministic): latents w = lrelu(lrelu(z A + a) B + b) * sqrt(2) with z ~ N(0, I), like a
StyleGAN mapping network's output (skewed, correlated dimensions); embeddings = tanh of a random linear map of
the centred latents plus Gaussian noise (`--noise` sets how hard identity is to predict from w); labels from
`identity_labels` with the paper's median threshold; every code is a reference unless `--references` says
fewer (the first R).

Every (size, solver) runs in a fresh subprocess; the figures are that run's own: wall time of
`fit_boundaries` and peak resident memory while it runs (psutil, sampled every 20 ms, this process plus its
joblib workers), next to the memory held before the fit (data and labels). `label` times the N x N labelling.
`svm` (scikit-learn LinearSVC per reference, joblib over all cores) fits only the first `--svm-sample`
references, after a warm-up fit that starts the worker pool, and its time for all R is extrapolated from
them (marked "~"). Agreement is measured on those
references: cosine between each solver's normal and LinearSVC's (median and 5th percentile), and validation
accuracies side by side (means over the sample, and mean absolute difference).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

SOLVERS = ("label", "svm", "batched", "ridge", "logistic")


def synthetic(count: int, dim: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((count, dim), dtype=np.float32)
    first = rng.standard_normal((dim, dim), dtype=np.float32) * np.sqrt(2 / dim)
    second = rng.standard_normal((dim, dim), dtype=np.float32) * np.sqrt(2 / dim)
    hidden = z @ first
    hidden = np.where(hidden > 0, hidden, 0.2 * hidden) @ second + 0.3
    latents = np.where(hidden > 0, hidden, 0.2 * hidden) * np.sqrt(2)
    projection = rng.standard_normal((dim, 128), dtype=np.float32) / np.sqrt(dim)
    embeddings = np.tanh((latents - latents.mean(axis=0)) @ projection * 2)
    embeddings += noise * rng.standard_normal(embeddings.shape, dtype=np.float32)
    return latents.astype(np.float32), embeddings.astype(np.float32)


class PeakMemory:
    """Peak RSS of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    from exfacegan.boundary import fit_boundaries
    from exfacegan.label import identity_labels

    latents, embeddings = synthetic(args.size, args.dim, args.noise)
    references = args.references or args.size
    baseline = PeakMemory().current()
    if args.solver == "label":
        with PeakMemory() as memory:
            start = time.perf_counter()
            labels = identity_labels(embeddings, references, chunk_size=1024, device=args.device)
            seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "baseline_gb": baseline / 2**30, "peak_gb": memory.peak / 2**30,
                          "fitted": references, "similar_fraction": float((labels == 1).mean())}))
        return
    labels = identity_labels(embeddings, references, device=args.device)
    del embeddings
    sample = min(args.svm_sample, references)
    rows = labels[:sample] if args.solver == "svm" else labels
    options = {"n_jobs": -1} if args.solver == "svm" else {"device": args.device}
    if args.solver == "svm":  # start joblib's worker pool (reused afterwards) outside the timed run
        fit_boundaries(latents, labels[-4:], "svm", progress=False, **options)
    baseline = PeakMemory().current()
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = fit_boundaries(latents, rows, args.solver, progress=False, **options)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    np.savez(args.out, normals=result.normals[:sample], val_accuracy=result.val_accuracy[:sample],
             valid=result.valid[:sample])
    print(json.dumps({
        "seconds": seconds, "baseline_gb": baseline / 2**30, "peak_gb": memory.peak / 2**30, "fitted": len(rows),
        "val_accuracy": float(result.val_accuracy[result.valid].mean()),
        "train_accuracy": float(result.train_accuracy[result.valid].mean()),
        "invalid": int((~result.valid).sum()),
    }))


def run_child(args: argparse.Namespace, size: int, solver: str, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", "--size", str(size), "--solver", solver, "--out", str(out),
               "--svm-sample", str(args.svm_sample), "--device", args.device, "--threads", str(args.threads),
               "--noise", str(args.noise), "--dim", str(args.dim)]
    if args.references:
        command += ["--references", str(args.references)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{solver} at N={size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 11000])
    parser.add_argument("--references", type=int, default=None, help="default: every code is a reference")
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--svm-sample", type=int, default=100, help="references LinearSVC fits (and compares on)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--solver", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(f"device={args.device} threads={args.threads} d={args.dim} noise={args.noise} svm_sample={args.svm_sample}")
    header = (f"{'N':>6} {'R':>6} {'solver':>9} {'time s':>9} {'peak GB':>8} {'held GB':>8} {'val acc':>8} "
              f"{'train acc':>9} {'cos med':>8} {'cos p5':>8} {'val(sample)':>11} {'svm val':>8} {'|dval|':>7}")
    print(header)
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            references = args.references or size
            outputs = {}
            for solver in args.solvers:
                out = Path(scratch) / f"{solver}_{size}.npz"
                stats = run_child(args, size, solver, out)
                time_text = f"{stats['seconds']:9.2f}"
                if solver == "svm" and stats["fitted"] < references:
                    time_text = f"~{stats['seconds'] * references / stats['fitted']:8.1f}"
                line = (f"{size:>6} {references:>6} {solver:>9} {time_text} {stats['peak_gb']:8.2f} "
                        f"{stats['baseline_gb']:8.2f}")
                if solver == "label":
                    print(line)
                    continue
                outputs[solver] = np.load(out)
                line += f" {stats['val_accuracy']:8.4f} {stats['train_accuracy']:9.4f}"
                if "svm" in outputs and solver != "svm":
                    svm, mine = outputs["svm"], outputs[solver]
                    both = svm["valid"] & mine["valid"]
                    cosines = (svm["normals"][both] * mine["normals"][both]).sum(axis=1)
                    gap = np.abs(svm["val_accuracy"][both] - mine["val_accuracy"][both]).mean()
                    line += (f" {np.median(cosines):8.4f} {np.percentile(cosines, 5):8.4f} "
                             f"{mine['val_accuracy'][both].mean():11.4f} {svm['val_accuracy'][both].mean():8.4f} "
                             f"{gap:7.4f}")
                print(line, flush=True)
            if "svm" in args.solvers and args.svm_sample < references:
                print(f"       (~: svm time extrapolated from its first {args.svm_sample} references; agreement "
                      f"columns compare on those {args.svm_sample})")


if __name__ == "__main__":
    main()
