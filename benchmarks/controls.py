"""Cost of the identity controls: distinct reference selection, and the identity filter per generated face.

    python benchmarks/controls.py [--device cpu|cuda] [--threads 2] [--samples 11000] [--dim 512]

Selection (references.max_similarity) on synthetic unit embeddings: isotropic ones (every code is accepted: the
accepted set, and so the work, grows to its largest) and ones sharing a common direction (impostor similarities
centred near 0.1 with a tail past 0.3, as a GAN's faces might have; some codes refused). The filter's cost per judged face is one embedding
by the judge (random weights at the real size; speed does not depend on them) plus its similarity to two
reference images; each reference adds two renders and two embeddings of its reference images.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from exfacegan.embedders.arcface import random_iresnet_embedder
from exfacegan.errors import ConfigError
from exfacegan.label import distinct_references
from exfacegan.stages.identity_filter import IdentityFilter, IdentityFilterSpec
from exfacegan.stages.offsets import Draw


def _seconds(run, repeats: int = 1) -> float:
    run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def selection(samples: int, dim: int, device: str) -> None:
    rng = np.random.default_rng(0)
    isotropic = rng.standard_normal((samples, dim)).astype(np.float32)
    # A common unit direction (weight 1/3) plus isotropic noise in a 96-d subspace: impostor similarities of
    # mean 0.1 and spread 0.09, a tail above 0.3 as for a GAN's faces under a real embedder.
    basis = np.linalg.qr(rng.standard_normal((dim, 97)))[0].T
    shared = (rng.standard_normal((samples, 96)) / np.sqrt(96) @ basis[1:] + basis[0] / 3).astype(np.float32)
    for name, embeddings in (("isotropic", isotropic), ("shared direction", shared)):
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        impostor = unit[:2000] @ unit[:2000].T
        mean = float(impostor[np.triu_indices(2000, 1)].mean())
        for bound, count in ((0.3, None), (0.3, 5000), (0.4, None)):
            start = time.perf_counter()
            try:
                outcome = f"{len(distinct_references(embeddings, bound, count, device=device))} accepted"
            except ConfigError as error:
                outcome = f"refused ({str(error).split(';')[0]})"
            print(f"select {name:16s} (impostor mean {mean:.3f}) N={samples} d={dim} bound={bound} "
                  f"count={count}: {time.perf_counter() - start:6.2f} s, {outcome}")


def judging(device: str, batch: int) -> None:
    faces = torch.randint(0, 256, (batch, 3, 112, 112), dtype=torch.uint8, device=device)
    draws = [Draw(0, 0, 0, k, k) for k in range(batch)]
    for arch, features in (("iresnet50", 512), ("iresnet100", 512), ((1, 1, 1, 1), 64)):
        judge = random_iresnet_embedder(arch, num_features=features).eval().to(device)
        spec = IdentityFilterSpec(min_reference_similarity=0.4, max_cross_similarity=0.3)

        def judge_batch(spec: IdentityFilterSpec = spec, judge: torch.nn.Module = judge) -> None:
            # A fresh filter per batch: its reference images (two per reference) are embedded too.
            tests = IdentityFilter(spec, judge, lambda refs: (faces[: 2 * len(refs)], [True] * 2 * len(refs))).tests()
            for test in tests:
                test(faces, draws)

        seconds = _seconds(judge_batch, repeats=2)
        print(f"filter, judge {arch}, {batch} faces of one reference + its 2 reference images: "
              f"{seconds:6.2f} s, {seconds / batch:6.3f} s per face")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=11000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, {args.threads} threads")
    selection(args.samples, args.dim, args.device)
    judging(args.device, args.batch)


if __name__ == "__main__":
    main()
