"""Stage 4: the synthetic dataset — new codes along each identity boundary, one folder per identity.

For reference r with latent w_r and unit normal n_r (pointing to the dissimilar side), class 2r
holds images of `w_r - u ⊙ n_r` and, with `both_sides`, class 2r+1 holds `w_r + u ⊙ n_r`, with
u ~ U(min_off, max_off) per dimension. Each class draws from its own seeded generator and references
are processed in fixed chunks, so the output does not depend on sharding or on interruptions.

A stage folder holds `plan.json` (how references are chunked, fixed when the stage starts),
`progress/<chunk>.csv` (the manifest rows of each completed chunk) and `dataset/`. An unsharded
call finishes the stage itself; shards only add chunks, and `finalize` (the merge stage) combines
them once every chunk is recorded, so that concurrent shards never finish the same folder twice.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from exfacegan.data.artifacts import atomic_path, load_json, save_json
from exfacegan.data.images import IMAGE_FORMATS, write_images
from exfacegan.errors import ConfigError, DataError
from exfacegan.gans.latent import Truncation, synthesize, to_uint8

log = logging.getLogger(__name__)

MANIFEST_FIELDS = ["path", "class", "reference", "side", "k", "offset_seed", "found"]
SIDES = ("same", "other")
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class GenerateArtifacts:
    dataset: Path
    manifest: Path
    stats: Path


@dataclass(frozen=True)
class OffsetSpec:
    per_class: int = 50
    min_off: float = 0.0
    max_off: float = 30.0
    both_sides: bool = True
    include_reference: bool = False
    seed: int = 0

    def validate(self) -> None:
        if self.per_class < 1:
            raise ConfigError(f"sampling.per_class must be at least 1, got {self.per_class}")
        if not 0 <= self.min_off <= self.max_off:
            raise ConfigError(f"need 0 <= sampling.min_off <= sampling.max_off, got {self.min_off} and {self.max_off}")


def offset_seed(seed: int, reference: int, side: int) -> int:
    return (seed << 40) | (reference << 1) | side


def identity_codes(
    reference_latents: np.ndarray, normals: np.ndarray, reference_ids: np.ndarray, spec: OffsetSpec
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """New codes [M, d], a per-image attribute seed [M], and one manifest row (without path) per code."""
    codes, attribute_seeds, rows = [], [], []
    for w, n, r in zip(reference_latents, normals, reference_ids):
        for side in range(2 if spec.both_sides else 1):
            seed = offset_seed(spec.seed, int(r), side)
            rng = np.random.default_rng(seed)
            u = rng.uniform(spec.min_off, spec.max_off, size=(spec.per_class, len(w)))
            if side == 0 and spec.include_reference:
                u[0] = 0.0
            direction = -1.0 if side == 0 else 1.0
            codes.append(w[None] + direction * u * n[None])
            attribute_seeds.append(rng.integers(2**62, size=spec.per_class))
            cls = 2 * int(r) + side if spec.both_sides else int(r)
            rows += [
                {"class": cls, "reference": int(r), "side": SIDES[side], "k": k, "offset_seed": seed}
                for k in range(spec.per_class)
            ]
    if not codes:  # every reference of the chunk lacks a boundary
        return np.zeros((0, reference_latents.shape[1]), np.float32), np.zeros(0, np.int64), rows
    return np.concatenate(codes).astype(np.float32), np.concatenate(attribute_seeds), rows


def generate(
    out_dir: Path,
    generator: nn.Module,
    aligner: nn.Module,
    *,
    reference_latents: np.ndarray,
    normals: np.ndarray,
    valid: np.ndarray | None = None,
    offsets: OffsetSpec = OffsetSpec(),
    truncation: Truncation = Truncation(),
    noise_mode: str = "const",
    precision: str = "fp32",
    image_format: str = "png",
    jpeg_quality: int = 95,
    batch_size: int = 16,
    references_per_chunk: int = 8,
    shard: int = 0,
    num_shards: int = 1,
    device: str | torch.device = "cpu",
) -> GenerateArtifacts | None:
    """Write this shard's identities into `out_dir/dataset`; unsharded, finish the stage and return its artifacts.

    Completed chunks are recorded in `out_dir/progress`, so a killed call resumes without redoing them.
    """
    offsets.validate()
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"dataset.image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    if normals.shape != reference_latents.shape or normals.shape[1] != generator.w_dim:
        raise DataError(
            f"boundaries of shape {normals.shape} do not fit this generator (w_dim={generator.w_dim}); "
            "were they fitted on another GAN?"
        )
    if not 0 <= shard < num_shards:
        raise ConfigError(f"generate.shard must be in [0, {num_shards}), got {shard}")
    if references_per_chunk < 1:
        raise ConfigError(f"generate.references_per_chunk must be at least 1, got {references_per_chunk}")
    out_dir = Path(out_dir)
    valid = np.ones(len(normals), bool) if valid is None else valid.astype(bool)
    if not valid.any():
        raise DataError(f"none of the {len(normals)} references has a boundary (valid=False for all); "
                        "nothing to generate")
    references_per_chunk = _plan(out_dir, len(normals), references_per_chunk)
    chunks = list(range(0, len(normals), references_per_chunk))
    mine = np.array_split(np.array(chunks), num_shards)[shard].tolist()
    progress = out_dir / "progress"
    for start in tqdm(mine, desc=f"generate shard {shard}/{num_shards}", unit="chunk"):
        record = progress / f"{start:06d}.csv"
        if record.is_file():
            continue
        ids = np.arange(start, min(start + references_per_chunk, len(normals)))
        ids = ids[valid[ids]]
        codes, attribute_seeds, rows = identity_codes(reference_latents[ids], normals[ids], ids, offsets)
        attribute_seeds = torch.from_numpy(attribute_seeds)
        for begin in range(0, len(codes), batch_size):
            batch = slice(begin, begin + batch_size)
            w = torch.from_numpy(codes[batch]).to(device)
            images = synthesize(
                generator, w, truncation=truncation, noise_mode=noise_mode,
                seeds=attribute_seeds[batch], precision=precision,
            )
            faces, found = aligner(images)
            found = found.cpu()
            keep = found.nonzero().flatten()
            paths = []
            for row, ok in zip(rows[batch], found.tolist()):
                row["found"] = int(ok)
                row["path"] = f"{row['class']:05d}/{row['class']:05d}_{row['k']:03d}.{image_format}" if ok else ""
                if ok:
                    paths.append(out_dir / "dataset" / row["path"])
            for path in {p.parent for p in paths}:
                path.mkdir(parents=True, exist_ok=True)
            write_images(paths, to_uint8(faces[keep.to(faces.device)]), quality=jpeg_quality)
        _write_rows(record, rows)
    if num_shards > 1:
        log.info("shard %d/%d done; run the merge stage once every shard has finished", shard, num_shards)
        return None
    return finalize(out_dir)


def _plan(out_dir: Path, num_references: int, references_per_chunk: int) -> int:
    """The chunk size of this stage folder: the one it was started with, which its progress records follow."""
    path = out_dir / PLAN_FILE
    if not path.is_file():
        save_json(path, {"references": num_references, "references_per_chunk": references_per_chunk})
        return references_per_chunk
    plan = load_json(path)
    if plan["references"] != num_references:
        raise DataError(f"{out_dir} was started for {plan['references']} references, not {num_references}")
    if plan["references_per_chunk"] != references_per_chunk:
        log.info("resuming with generate.references_per_chunk=%d, the value this stage started with",
                 plan["references_per_chunk"])
    return plan["references_per_chunk"]


def finalize(out_dir: Path) -> GenerateArtifacts:
    """Check that every chunk is recorded, then combine the records into `manifest.csv` and `stats.json`."""
    out_dir = Path(out_dir)
    progress = out_dir / "progress"
    if not (out_dir / PLAN_FILE).is_file():
        raise DataError(f"{out_dir} holds no generated chunks; run the generate stage (or its shards) first")
    plan = load_json(out_dir / PLAN_FILE)
    chunks = range(0, plan["references"], plan["references_per_chunk"])
    absent = [start for start in chunks if not (progress / f"{start:06d}.csv").is_file()]
    if absent:
        raise DataError(
            f"{len(absent)} of {len(chunks)} chunks are not generated yet (the first holds references "
            f"{absent[0]}-{min(absent[0] + plan['references_per_chunk'], plan['references']) - 1}); "
            "finish every generate shard before merging"
        )
    for stray in out_dir.rglob(".*.tmp"):  # left by a killed writer
        stray.unlink()
    rows = [row for start in chunks for row in _read_rows(progress / f"{start:06d}.csv")]
    kept = [row for row in rows if row["found"] == "1"]
    missing = [row["path"] for row in kept if not (out_dir / "dataset" / row["path"]).is_file()]
    if missing:
        raise DataError(f"{len(missing)} images recorded as written are missing, e.g. {missing[0]}")
    artifacts = GenerateArtifacts(out_dir / "dataset", out_dir / "manifest.csv", out_dir / "stats.json")
    _write_rows(artifacts.manifest, kept)
    classes = {row["class"] for row in kept}
    save_json(artifacts.stats, {
        "attempted": len(rows), "dropped": len(rows) - len(kept), "images": len(kept), "classes": len(classes),
    })
    return artifacts


def _write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(rows)


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
