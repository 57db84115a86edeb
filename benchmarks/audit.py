"""The audit's nearest-real search at scale: Q synthetic embeddings against a gallery of G real ones.

    python benchmarks/audit.py [--queries 500000] [--gallery 100000] [--dim 512] [--dtype float32|float16|bfloat16]
                               [--query-chunk 4096] [--gallery-chunk 16384] [--threads 2] [--device cpu|cuda]

Random unit vectors (speed does not depend on their values), stored in --dtype and multiplied in it; the
search keeps only each query's running best (exfacegan.metrics.nearest). Prints the wall time, the rate in
GFLOP/s (2 D flops per pair) and the process's peak resident memory (CPU) or the peak allocated memory (CUDA).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from exfacegan.metrics.nearest import nearest

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def unit_vectors(count: int, dim: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(count, dim, dtype=dtype)
    for start in range(0, count, 65536):  # normalise in float32, store in dtype
        block = torch.randn(min(65536, count - start), dim, generator=generator)
        out[start : start + len(block)] = torch.nn.functional.normalize(block, dim=1).to(dtype)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=500_000)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--query-chunk", type=int, default=4096)
    parser.add_argument("--gallery-chunk", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    queries = unit_vectors(args.queries, args.dim, dtype, 0)
    gallery = unit_vectors(args.gallery, args.dim, dtype, 1)
    if args.device.startswith("cuda"):
        queries, gallery = queries.to(args.device), gallery.to(args.device)
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    found = nearest(queries, gallery, query_chunk=args.query_chunk, gallery_chunk=args.gallery_chunk, dtype=dtype,
                    device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    pairs = args.queries * args.gallery
    peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(f"{args.queries:,} x {args.gallery:,} x {args.dim} ({args.dtype}, chunks {args.query_chunk} x "
          f"{args.gallery_chunk}, {args.threads} threads, {args.device}): {seconds:.1f} s, "
          f"{2 * args.dim * pairs / seconds / 1e9:.0f} GFLOP/s, {pairs / seconds / 1e9:.2f} G pairs/s, "
          f"peak memory {peak / 2**30:.2f} GiB (inputs {(queries.nbytes + gallery.nbytes) / 2**30:.2f} GiB); "
          f"best score mean {found.score.mean():.4f}")


if __name__ == "__main__":
    main()
