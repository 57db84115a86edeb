"""Stage 4: the synthetic dataset — new codes along each identity boundary, one folder per identity.

Which code each image gets is `exfacegan.stages.offsets` (seeded draws, mirrored sides). A chunk of
references is filled in rounds: round 0 renders every slot of its classes with its first draw, aligns the
faces and runs the acceptance tests (a face was found, then any extra `Acceptance`, e.g. an identity
filter); a slot whose image fails takes the class's next unused draw in the next round
(`on_no_face="redraw"`), in slot order, until the class has spent `max_attempts` renders; with
`on_no_face="drop"` (the paper code) it stays empty. Each side of a mirrored pair is tested and re-drawn
on its own: draw t gives `w - u_t ⊙ n` in class 2r and `w + u_t ⊙ n` in class 2r+1, and when only one of
the two finds a face, that draw stays in that class alone and the other class fills the slot with its
next draw (mirror images are the rows of equal reference and attempt in the manifest). Everything
depends only on the chunk's references, so the output does not depend on sharding or interruptions.

A stage folder holds `plan.json` (how references are chunked, fixed when the stage starts),
`progress/<chunk>.csv` (one row per render of the chunk, once it is complete, with the SHA-256 of each image
written, hashed from the encoded bytes before they reach the disk) and `dataset/`. An
unsharded call finishes the stage itself; shards only add chunks, and `finalize` (the merge stage)
combines them once every chunk is recorded, so that concurrent shards never finish the same folder twice.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from exfacegan.data.artifacts import atomic_path, load_json, save_json
from exfacegan.data.images import IMAGE_FORMATS, write_images
from exfacegan.data.manifest import MANIFEST_FIELDS, read_manifest
from exfacegan.errors import ConfigError, DataError
from exfacegan.align.pose import POSE_COLUMNS, align_with_points, head_pose
from exfacegan.gans.latent import Truncation, synthesize, to_uint8
from exfacegan.stages.offsets import REFERENCE_ATTEMPT, SIDES, Draw, OffsetSpec, draw_codes, first_draws
from exfacegan.stages.pose_direction import PoseShift
from exfacegan.weights import sha256_of

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
NO_FACE = "no_face"


@dataclass(frozen=True)
class GenerateArtifacts:
    dataset: Path
    manifest: Path
    stats: Path


class Acceptance(Protocol):
    """A test a rendered face must pass to be kept; a face that fails it is re-drawn (or dropped) like a face
    the aligner did not find, and counted in stats.json as `rejected_<name>`."""

    name: str

    def __call__(self, faces: torch.Tensor, draws: list[Draw]) -> torch.Tensor:
        """bool [M] for uint8 faces [M, 3, H, W] (as they will be saved) of these draws."""
        ...


@dataclass(frozen=True)
class GenerateSpec:
    """Every setting of the generate stage, checked once when built."""

    offsets: OffsetSpec = OffsetSpec()
    truncation: Truncation = Truncation()
    noise_mode: str = "const"
    precision: str = "fp32"
    image_format: str = "png"
    jpeg_quality: int = 95
    batch_size: int = 16
    references_per_chunk: int = 8
    shard: int = 0
    num_shards: int = 1

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ConfigError(f"dataset.image_format must be one of {sorted(IMAGE_FORMATS)}, got {self.image_format!r}")
        for key, value in (("gan.batch_size", self.batch_size), ("generate.num_shards", self.num_shards),
                           ("generate.references_per_chunk", self.references_per_chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
        if not 0 <= self.shard < self.num_shards:
            raise ConfigError(f"generate.shard={self.shard} must be in [0, generate.num_shards={self.num_shards})")

    @classmethod
    def from_config(cls, cfg: DictConfig) -> GenerateSpec:
        """From a composed config; keys it lacks keep their defaults."""
        def node(key: str) -> dict:
            value = OmegaConf.select(cfg, key, default=None)
            return OmegaConf.to_container(value, resolve=True) if value is not None else {}

        keys = {"noise_mode": "gan.noise_mode", "precision": "gan.precision", "image_format": "dataset.image_format",
                "jpeg_quality": "dataset.jpeg_quality", "batch_size": "gan.batch_size", "shard": "generate.shard",
                "references_per_chunk": "generate.references_per_chunk", "num_shards": "generate.num_shards"}
        defaults = {f.name: f.default for f in fields(cls)}
        return cls(offsets=OffsetSpec(**node("sampling")), truncation=Truncation(**node("gan.truncation")),
                   **{name: OmegaConf.select(cfg, key, default=defaults[name]) for name, key in keys.items()})


def generate(
    out_dir: Path,
    generator: nn.Module,
    aligner: nn.Module,
    *,
    reference_latents: np.ndarray,
    normals: np.ndarray,
    valid: np.ndarray | None = None,
    spec: GenerateSpec = GenerateSpec(),
    accept: Sequence[Acceptance] = (),
    device: str | torch.device = "cpu",
    pose: PoseShift | None = None,
) -> GenerateArtifacts | None:
    """Write this shard's identities into `out_dir/dataset`; unsharded, finish the stage and return its artifacts.

    Completed chunks are recorded in `out_dir/progress`, so a killed call resumes without redoing them.
    `pose`: the per-reference yaw directions `spec.offsets.pose` needs (see `stages.offsets.draw_codes`).
    """
    valid = _check_boundaries(generator, reference_latents, normals, valid)
    out_dir = Path(out_dir)
    spec = _plan(out_dir, len(normals), spec)
    per_chunk = spec.references_per_chunk
    chunks = list(range(0, len(normals), per_chunk))
    mine = np.array_split(np.array(chunks), spec.num_shards)[spec.shard].tolist()
    for start in tqdm(mine, desc=f"generate shard {spec.shard}/{spec.num_shards}", unit="chunk"):
        record = out_dir / "progress" / f"{start:06d}.csv"
        if not record.is_file():
            _write_rows(record, render_chunk(out_dir / "dataset", generator, aligner,
                                             reference_latents=reference_latents, normals=normals,
                                             references=chunk_references(start, per_chunk, valid), spec=spec,
                                             accept=accept, device=device, pose=pose))
    if spec.num_shards > 1:
        log.info("shard %d/%d done; run the merge stage once every shard has finished", spec.shard, spec.num_shards)
        return None
    return finalize(out_dir)


def chunk_references(start: int, per_chunk: int, valid: np.ndarray) -> np.ndarray:
    """The references with a boundary in the chunk that begins at reference `start`."""
    ids = np.arange(start, min(start + per_chunk, len(valid)))
    return ids[valid[ids]]


def render_chunk(dataset: Path, generator: nn.Module, aligner: nn.Module, *, reference_latents: np.ndarray,
                 normals: np.ndarray, references: np.ndarray, spec: GenerateSpec, accept: Sequence[Acceptance] = (),
                 device: str | torch.device = "cpu", pose: PoseShift | None = None) -> list[dict]:
    """Every class of one chunk's references rendered, tested and written under `dataset` exactly as the generate
    stage does it (same batches, same re-draws); returns its manifest rows. The generate stage calls it for each
    chunk, `exfacegan verify --regenerate` for the chunks of the classes it checks."""
    render = _Renderer(dataset, generator, aligner, reference_latents, normals, spec, accept, device, pose)
    return _fill_classes(references, spec, render)


def _check_boundaries(generator: nn.Module, latents: np.ndarray, normals: np.ndarray,
                      valid: np.ndarray | None) -> np.ndarray:
    if normals.shape != latents.shape or normals.shape[1] != generator.w_dim:
        raise DataError(
            f"boundaries of shape {normals.shape} do not fit this generator (w_dim={generator.w_dim}); "
            "were they fitted on another GAN?"
        )
    valid = np.ones(len(normals), bool) if valid is None else valid.astype(bool)
    if not valid.any():
        raise DataError(f"none of the {len(normals)} references has a boundary (valid=False for all); "
                        "nothing to generate")
    return valid


def _fill_classes(references: np.ndarray, spec: GenerateSpec, render: _Renderer) -> list[dict]:
    """Render, test and write every class of these references, re-drawing failed slots; one row per render."""
    offsets = spec.offsets
    pending = first_draws(references, offsets)
    renders = Counter(d.cls for d in pending)
    next_attempt = dict.fromkeys(renders, offsets.per_class)
    rows: list[dict] = []
    while pending:
        verdicts = [v for begin in range(0, len(pending), spec.batch_size)
                    for v in render(pending[begin : begin + spec.batch_size])]
        rows += [_row(d, *verdict, spec.image_format) for d, verdict in zip(pending, verdicts)]
        retry = []
        for d, (_, rejected, *_) in zip(pending, verdicts):
            if rejected and offsets.on_no_face == "redraw" and renders[d.cls] < offsets.attempts_per_class:
                retry.append(Draw(d.cls, d.reference, d.side, d.slot, next_attempt[d.cls]))
                next_attempt[d.cls] += 1
                renders[d.cls] += 1
        pending = retry
    return rows


class _Renderer:
    """draws -> (found, rejected reason or "", sha256 of the written file or "", (yaw, pitch, roll)) per draw;
    writes the kept faces to their slots under `dataset`."""

    def __init__(self, dataset: Path, generator: nn.Module, aligner: nn.Module, latents: np.ndarray,
                 normals: np.ndarray, spec: GenerateSpec, accept: Sequence[Acceptance], device: Any,
                 pose: PoseShift | None = None) -> None:
        if spec.offsets.pose.active and pose is None and not is_controlled(generator):
            raise DataError("sampling.pose.yaw_range is set but no yaw direction was given; rerun the fit stage")
        self.dataset, self.generator, self.aligner, self.pose = dataset, generator, aligner, pose
        self.latents, self.normals, self.spec, self.accept, self.device = latents, normals, spec, accept, device

    def __call__(self, draws: list[Draw]) -> list[tuple[bool, str, str, np.ndarray]]:
        spec = self.spec
        codes, attribute_seeds = draw_codes(draws, self.latents, self.normals, spec.offsets, self.pose)
        faces, found, poses = render_posed_faces(self.generator, self.aligner, codes, attribute_seeds, spec,
                                                 self.device)
        rejected = _rejections(faces, found, draws, self.accept)
        kept = [i for i, reason in enumerate(rejected) if not reason]
        paths = [self.dataset / _image_path(draws[i], spec.image_format) for i in kept]
        for folder in {p.parent for p in paths}:
            folder.mkdir(parents=True, exist_ok=True)
        digests = write_images(paths, faces[torch.tensor(kept, dtype=torch.long, device=faces.device)].cpu(),
                               quality=spec.jpeg_quality)
        sha256 = [""] * len(draws)
        for i, digest in zip(kept, digests):
            sha256[i] = digest
        return list(zip(found, rejected, sha256, poses))


def render_faces(generator: nn.Module, aligner: nn.Module, codes: np.ndarray, attribute_seeds: np.ndarray,
                 spec: GenerateSpec, device: Any) -> tuple[torch.Tensor, list[bool]]:
    """uint8 aligned faces [M, 3, H, W] of these codes, as the dataset saves them, and whether each was found."""
    faces, found, _ = render_posed_faces(generator, aligner, codes, attribute_seeds, spec, device)
    return faces, found


def render_posed_faces(generator: nn.Module, aligner: nn.Module, codes: np.ndarray, attribute_seeds: np.ndarray,
                       spec: GenerateSpec, device: Any) -> tuple[torch.Tensor, list[bool], np.ndarray]:
    """`render_faces` and each face's head pose [M, 3] (yaw, pitch, roll; NaN without landmarks)."""
    with controller_yaw(generator, spec.offsets.pose.yaw_range):
        images = synthesize(generator, torch.from_numpy(codes).to(device), truncation=spec.truncation,
                            noise_mode=spec.noise_mode, seeds=torch.from_numpy(attribute_seeds),
                            precision=spec.precision)
    faces, found, points = align_with_points(aligner, images)
    return to_uint8(faces), found.bool().cpu().tolist(), head_pose(points, found)


def is_controlled(generator: nn.Module) -> bool:
    """Whether the generator sets each image's pose itself (GAN-Control's attribute controllers)."""
    return hasattr(generator, "attribute_ranges")


@contextmanager
def controller_yaw(generator: nn.Module, yaw_range: tuple[float, float] | None) -> Iterator[None]:
    """For GAN-Control with `sampling.pose`, the orientation controller draws its yaw from `yaw_range` (whole
    degrees, both ends included) while rendering; other generators, or no range, are left as they are."""
    if yaw_range is None or not is_controlled(generator):
        yield
        return
    from dataclasses import replace as with_field

    before = generator.attribute_ranges
    generator.attribute_ranges = with_field(before, yaw=(int(yaw_range[0]), int(yaw_range[1])))
    try:
        yield
    finally:
        generator.attribute_ranges = before


def _rejections(faces: torch.Tensor, found: list[bool], draws: list[Draw], accept: Sequence[Acceptance]) -> list[str]:
    """Per face, the name of the first test it fails ("" when kept): a face must be found, then pass each test."""
    rejected = ["" if ok else NO_FACE for ok in found]
    for test in accept:
        todo = [i for i, reason in enumerate(rejected) if not reason]
        if todo:
            passed = test(faces[torch.tensor(todo, device=faces.device)], [draws[i] for i in todo]).cpu().tolist()
            for i, ok in zip(todo, passed):
                rejected[i] = "" if ok else test.name
    return rejected


def _image_path(draw: Draw, image_format: str) -> str:
    return f"{draw.cls:05d}/{draw.cls:05d}_{draw.slot:03d}.{image_format}"


def _row(draw: Draw, found: bool, rejected: str, sha256: str, pose: np.ndarray, image_format: str) -> dict:
    return {"path": "" if rejected else _image_path(draw, image_format), "class": draw.cls,
            "reference": draw.reference, "side": SIDES[draw.side], "k": draw.slot, "attempt": draw.attempt,
            "found": int(found), "rejected": rejected, "sha256": sha256,
            **{name: f"{v:.3f}" for name, v in zip(POSE_COLUMNS, pose)}}


def _plan(out_dir: Path, num_references: int, spec: GenerateSpec) -> GenerateSpec:
    """The spec this stage folder was started with: its chunk size, which its progress records follow, and its
    render batch size (a render's last bits can depend on the other images of its batch)."""
    path = out_dir / PLAN_FILE
    if not path.is_file():
        save_json(path, {"references": num_references, "references_per_chunk": spec.references_per_chunk,
                         "batch_size": spec.batch_size})
        return spec
    plan = load_json(path)
    if plan["references"] != num_references:
        raise DataError(f"{out_dir} was started for {plan['references']} references, not {num_references}")
    started = replace(spec, references_per_chunk=plan["references_per_chunk"],
                      batch_size=plan.get("batch_size", spec.batch_size))
    if started != spec:
        log.info("resuming with generate.references_per_chunk=%d and gan.batch_size=%d, the values this stage "
                 "started with", started.references_per_chunk, started.batch_size)
    return started


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
    kept = sorted((row for row in rows if not row["rejected"]), key=lambda row: (int(row["class"]), int(row["k"])))
    missing = [row["path"] for row in kept if not (out_dir / "dataset" / row["path"]).is_file()]
    if missing:
        raise DataError(f"{len(missing)} images recorded as written are missing, e.g. {missing[0]}")
    for row in kept:
        if not row.get("sha256"):  # a record written before manifests held hashes: hash the file once
            row["sha256"] = sha256_of(out_dir / "dataset" / row["path"])
    artifacts = GenerateArtifacts(out_dir / "dataset", out_dir / "manifest.csv", out_dir / "stats.json")
    _write_rows(artifacts.manifest, kept)
    save_json(artifacts.stats, generate_stats(rows))
    return artifacts


def generate_stats(rows: list[dict]) -> dict[str, Any]:
    """Counts over every render: attempted, redrawn (renders past a slot's first draw), rejected per test,
    dropped (slots left empty), images, classes with an image, and classes short of their slots."""
    slots = Counter((row["class"], row["k"]) for row in rows)
    images = Counter(row["class"] for row in rows if not row["rejected"])
    per_class = Counter(cls for cls, _ in slots)
    stats = {
        "attempted": len(rows),
        "redrawn": sum(int(row["attempt"]) not in (int(row["k"]), REFERENCE_ATTEMPT) for row in rows),
        "dropped": len(slots) - sum(images.values()),
        "images": sum(images.values()),
        "classes": len(images),
        "classes_short": sum(images[cls] < count for cls, count in per_class.items()),
    }
    reasons = Counter(row["rejected"] for row in rows if row["rejected"])
    stats.update({f"rejected_{reason}": count for reason, count in sorted(reasons.items())})
    stats.setdefault(f"rejected_{NO_FACE}", 0)
    return {**stats, **_acceptance(rows)}


def _acceptance(rows: list[dict]) -> dict[str, Any]:
    """Of the renders that showed a face, the fraction every acceptance test kept: overall, its lowest and median
    value over classes, and per class (1.0 when there is no test beyond finding a face)."""
    faces = Counter(int(row["class"]) for row in rows if int(row["found"]))
    kept = Counter(int(row["class"]) for row in rows if int(row["found"]) and not row["rejected"])
    per_class = {f"{cls:05d}": kept[cls] / faces[cls] for cls in sorted(faces)}
    if not per_class:
        return {}
    rates = np.array(list(per_class.values()))
    return {"accepted_fraction": sum(kept.values()) / sum(faces.values()),
            "accepted_fraction_class_min": float(rates.min()), "accepted_fraction_class_median": float(np.median(rates)),
            "accepted_fraction_per_class": per_class}


def _write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(rows)


def _read_rows(path: Path) -> list[dict]:
    return read_manifest(path)
