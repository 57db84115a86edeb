"""`exfacegan verify`: is a folder exactly the dataset its tables describe, and the output of the config it names?

PATH is a run directory (`generate/manifest.csv` lists `generate/dataset/`), its `generate/` folder, or an
export (`DATASET.md` lists the SHA-256 of its top-level files, `samples.csv` each image's; an image-folder
export is checked image by image). Every listed file is re-hashed, streaming, and each missing, altered or
unlisted file gives one line. Only regular files inside PATH are opened: a symbolic link, a path that
climbs out, or a table that is not one (see `exfacegan.data.manifest`) is refused in one `DataError` line.

`regenerate` re-renders classes chosen with a seed from the run's config.yaml, fit boundaries and weights
through the generate stage's own chunk renderer (`render_chunk`, whole chunks so that every batch is the one
the stage rendered) and compares them with the files of the manifest.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from exfacegan.data.manifest import (REQUIRED_MANIFEST_FIELDS, SAMPLES_FIELDS, decode_text, inside, iter_table,
                                     open_inside)
from exfacegan.errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:
    from exfacegan.stages.generate import GenerateSpec
    from exfacegan.stages.identity_filter import IdentityFilterSpec

CARD = "DATASET.md"
SAMPLES = "samples.csv"
MAX_CARD_BYTES = 16 << 20
MIN_IMAGE_BYTES = 64  # no encoded image is smaller: bounds the images a card can claim for its bytes
PIXEL_TOLERANCE = 8  # max |difference| per channel (of 255) accepted when the environment differs from the run's
_CARD_FILE = re.compile(r"- `([^`/\\]{1,255})`: `([0-9a-f]{64})`")
_CARD_IMAGES = re.compile(r"\| images \| (\d{1,12}) \|")


@dataclass
class Listing:
    """What PATH claims: files (relative to `root`) and their SHA-256."""

    root: Path
    kind: str  # run | generate | export
    table: str  # the file that lists the images, relative to root
    present: list[str]  # the files found in the folder the table lists, relative to root
    files: dict[str, str] = field(default_factory=dict)
    manifest: list[dict[str, str]] = field(default_factory=list)  # generate's rows (run or generate folder)
    ignored: set[str] = field(default_factory=set)  # files that list the others (the card)


@dataclass
class Outcome:
    checked: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.lines


def locate(path: Path) -> Listing:
    """What PATH is, and what it claims to hold; one DataError line when it is none of the three."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give a run directory, its generate/ folder or an exported dataset")
    if (root / "generate" / "manifest.csv").exists() or (root / "generate" / "dataset").is_dir():
        return _generate_listing(root, "generate/", "run")
    if (root / "manifest.csv").exists() and (root / "dataset").is_dir():
        return _generate_listing(root, "", "generate")
    if (root / CARD).exists() or (root / SAMPLES).exists():
        return _export_listing(root)
    raise DataError(f"{root} is not an exfacegan run, generate folder or exported dataset "
                    "(no generate/manifest.csv, manifest.csv + dataset/, or DATASET.md + samples.csv)")


def _walk(root: Path, folder: str) -> list[str]:
    """Every file under root/folder, relative to root; refuses symbolic links and anything but regular files."""
    base = inside(root, folder) if folder else root
    found = []
    for directory, subfolders, names in os.walk(base):
        for name in subfolders + names:
            mode = os.lstat(os.path.join(directory, name)).st_mode
            relative = Path(directory, name).relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise DataError(f"{relative} in {root} is a symbolic link (datasets hold none); refused")
            if name in names and not stat.S_ISREG(mode):
                raise DataError(f"{relative} in {root} is not a regular file; refused")
        found += [Path(directory, name).relative_to(root).as_posix() for name in names]
    return sorted(found)


def _generate_listing(root: Path, prefix: str, kind: str) -> Listing:
    table = f"{prefix}manifest.csv"
    if not (root / table).exists():
        raise DataError(f"{root} has {prefix}dataset/ but no {table}: its generate stage is not finished")
    present = _walk(root, f"{prefix}dataset")
    # Missing images are reported one by one, but a table that lists far more than the folder holds is no manifest.
    limit = 2 * len(present) + 100
    rows = list(iter_table(root, table, REQUIRED_MANIFEST_FIELDS, max_rows=limit))
    listing = Listing(root, kind, table, present, manifest=rows)
    for number, row in enumerate(rows, start=2):
        if "sha256" not in row:
            raise DataError(f"{root / table} has no sha256 column (written by an exfacegan without image hashes); "
                            "nothing to verify against")
        if not row["path"]:
            continue
        name = f"{prefix}dataset/{row['path']}"
        if name in listing.files:
            raise DataError(f"{root / table}: line {number} lists {row['path']} a second time")
        if not row["sha256"]:
            raise DataError(f"{root / table}: line {number} lists {row['path']} without a sha256")
        listing.files[name] = row["sha256"]
    return listing


def _read_card(root: Path) -> tuple[dict[str, str], int | None]:
    """The card's SHA-256 per exported top-level file, and the number of images it claims."""
    with open_inside(root, CARD) as handle:
        data = handle.read(MAX_CARD_BYTES + 1)
    if len(data) > MAX_CARD_BYTES:
        raise DataError(f"{root / CARD} is larger than {MAX_CARD_BYTES >> 20} MiB; not a dataset card")
    text = decode_text(data, str(root / CARD), "a dataset card")
    files: dict[str, str] = {}
    lines = text.splitlines()
    if "SHA-256 of the exported files:" not in lines:
        raise DataError(f"{root / CARD} lists no SHA-256 of the exported files; not an exfacegan dataset card")
    for line in lines[lines.index("SHA-256 of the exported files:") + 1:]:
        if line.startswith("## "):
            break
        if not line.strip():
            continue
        match = _CARD_FILE.fullmatch(line)
        if match is None or match.group(1) in (".", "..", CARD):
            raise DataError(f"{root / CARD}: {line[:80]!r} is not a `file`: `sha256` line")
        files[match.group(1)] = match.group(2)
    claimed = next((int(m.group(1)) for line in lines if (m := _CARD_IMAGES.fullmatch(line))), None)
    return files, claimed


def _export_listing(root: Path) -> Listing:
    for name in (CARD, SAMPLES):
        if not (root / name).exists():
            raise DataError(f"{root} has no {name}; an exported dataset holds DATASET.md and samples.csv")
    files, claimed = _read_card(root)
    present = _walk(root, "")
    size = sum((root / name).stat().st_size for name in present)
    if claimed is None or claimed > size // MIN_IMAGE_BYTES:
        raise DataError(f"{root / CARD} claims {claimed} images, which its {size} bytes of files cannot hold; refused")
    listing = Listing(root, "export", f"{CARD} and {SAMPLES}", present, files=dict(files), ignored={CARD})
    folder_format = "train.rec" not in files and not any(name.startswith("shard-") for name in files)
    rows = 0
    for rows, row in enumerate(iter_table(root, SAMPLES, SAMPLES_FIELDS, max_rows=claimed), start=1):
        if not row["sha256"]:
            raise DataError(f"{root / SAMPLES}: line {rows + 1} has no sha256")
        if folder_format:
            if row["key"] in listing.files:
                raise DataError(f"{root / SAMPLES} lists {row['key']} a second time")
            listing.files[row["key"]] = row["sha256"]
    if rows != claimed:
        raise DataError(f"{root / CARD} claims {claimed} images but {SAMPLES} lists {rows}; refused")
    return listing


def sha256_inside(root: Path, relative: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open_inside(root, relative) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_files(listing: Listing) -> Outcome:
    """Re-hash every listed file; one line per missing, altered or unlisted file."""
    present = set(listing.present)
    outcome = Outcome()
    for name in tqdm(sorted(listing.files), desc="verify", unit="file", file=sys.stderr, disable=None):
        if name not in present:
            outcome.lines.append(f"missing: {name}")
            continue
        actual = sha256_inside(listing.root, name)
        outcome.checked += 1
        if actual != listing.files[name]:
            outcome.lines.append(f"altered: {name} (sha256 {actual[:16]}…, {listing.table} says "
                                 f"{listing.files[name][:16]}…)")
    outcome.lines += [f"unlisted: {name}" for name in sorted(present - set(listing.files) - listing.ignored)]
    return outcome


def _images_by_class(rows: list[dict[str, str]]) -> dict[int, dict[str, str]]:
    classes: dict[int, dict[str, str]] = {}
    for row in rows:
        if row["path"]:
            classes.setdefault(int(row["class"]), {})[row["path"]] = row.get("sha256", "")
    return classes


@dataclass(frozen=True)
class Regenerated:
    classes: list[int]
    lines: list[str]
    comparison: str


@dataclass(frozen=True)
class RegenerationPlan:
    """Everything --regenerate checks before any network is built."""

    run_dir: Path
    config_path: Path
    cfg: DictConfig
    spec: GenerateSpec
    filter_spec: IdentityFilterSpec
    provenance: dict
    stale: dict[str, str]
    boundaries: dict[str, np.ndarray]
    per_chunk: int
    chosen: list[int]
    chunks: list[int]


def plan_regeneration(listing: Listing, count: int, seed: int) -> RegenerationPlan:
    """The classes to re-render (chosen with `seed`) and the run's settings, after checking the run folder and
    that every weights file has the SHA-256 provenance.json recorded."""
    from exfacegan.rebuild import load_run_config
    from exfacegan.stages.generate import PLAN_FILE, GenerateSpec
    from exfacegan.stages.identity_filter import IdentityFilterSpec

    run_dir = listing.root if listing.kind == "run" else listing.root.parent
    if listing.kind == "export" or load_run_config(run_dir) is None:
        raise DataError(f"--regenerate needs the run directory (config.yaml, fit/, generate/); {listing.root} is "
                        f"{'an export' if listing.kind == 'export' else 'not inside one'}")
    config_path, cfg = load_run_config(run_dir)
    spec = replace(GenerateSpec.from_config(cfg), shard=0, num_shards=1)
    filter_spec = IdentityFilterSpec.from_config(cfg)
    provenance = _load_small_json(run_dir, "provenance.json")
    check_weights(cfg, provenance, filter_spec.active)
    plan = _load_small_json(run_dir, f"generate/{PLAN_FILE}")
    boundaries = _load_boundaries(run_dir)
    valid = boundaries["valid"]
    per_chunk = plan.get("references_per_chunk")
    if plan.get("references") != len(valid) or not isinstance(per_chunk, int) or per_chunk < 1:
        raise DataError(f"{run_dir}/generate/{PLAN_FILE} does not describe the {len(valid)} references of "
                        "fit/boundaries.npz")
    spec = replace(spec, references_per_chunk=per_chunk, batch_size=plan.get("batch_size", spec.batch_size))
    both = spec.offsets.both_sides
    candidates = [2 * r + side if both else r for r in np.flatnonzero(valid).tolist()
                  for side in range(spec.offsets.sides)]
    if count > len(candidates):
        raise ConfigError(f"--regenerate {count}: the run has {len(candidates)} classes")
    chosen = sorted(np.random.default_rng(seed).choice(candidates, size=count, replace=False).tolist())
    chunks = sorted({(c // 2 if both else c) // per_chunk * per_chunk for c in chosen})
    return RegenerationPlan(run_dir, config_path, cfg, spec, filter_spec, provenance, stale_stages(cfg, run_dir),
                            boundaries, per_chunk, chosen, chunks)


def regenerate(plan: RegenerationPlan, listing: Listing, device: str) -> Regenerated:
    """Re-render the planned classes through the generate stage's chunk renderer; compare with the manifest."""
    from omegaconf import OmegaConf

    from exfacegan.rebuild import rebuild_network
    from exfacegan.stages.generate import chunk_references, render_chunk
    from exfacegan.stages.identity_filter import identity_filter_tests

    cfg, spec, stale, chosen, chunks = plan.cfg, plan.spec, plan.stale, plan.chosen, plan.chunks
    latents, normals, valid = (plan.boundaries[key] for key in ("reference_latents", "normals", "valid"))
    generator = rebuild_network(cfg.gan.network, plan.config_path, device)
    aligner = rebuild_network(cfg.align, plan.config_path, device)
    pose = None
    if spec.offsets.pose.active and not hasattr(generator, "attribute_ranges"):  # GAN-Control: its controller
        from exfacegan.stages.pose_direction import POSE_DIRECTION_FILE, load_pose_shift

        pose = load_pose_shift(plan.run_dir / "fit" / POSE_DIRECTION_FILE, len(normals), normals.shape[1])
    accept = []
    if plan.filter_spec.active:
        judge_node = OmegaConf.select(cfg, "filter.judge.network", default=None) or cfg.embedder.network
        judge = rebuild_network(judge_node, plan.config_path, device)
        accept = identity_filter_tests(plan.filter_spec, judge, generator, aligner, latents, normals, spec, device)
    per_chunk, provenance = plan.per_chunk, plan.provenance
    expected = _images_by_class(listing.manifest)
    prefix = "generate/" if listing.kind == "run" else ""
    same_environment = _same_environment(provenance, cfg, device)
    lines = [f"config.yaml does not match the recorded {stage} stage: {why}" for stage, why in stale.items()]
    with tempfile.TemporaryDirectory(prefix="exfacegan-verify-") as tmp:
        rows = [row for start in tqdm(chunks, desc="regenerate", unit="chunk", file=sys.stderr, disable=None)
                for row in render_chunk(Path(tmp), generator, aligner, reference_latents=latents, normals=normals,
                                        references=chunk_references(start, per_chunk, valid), spec=spec,
                                        accept=accept, device=device, pose=pose)]
        rendered = _images_by_class(rows)
        for cls in chosen:
            why = _class_difference(rendered.get(cls, {}), expected.get(cls, {}), Path(tmp), listing.root,
                                    f"{prefix}dataset", same_environment)
            if why is None and stale:
                why = f"made from boundaries or settings other than config.yaml's ({', '.join(stale)})"
            if why is not None:
                lines.append(f"class {cls:05d} differs: {why}")
    comparison = "bytes (SHA-256)" if same_environment else \
        f"decoded pixels within {PIXEL_TOLERANCE}/255 (torch, CUDA or device differ from provenance.json's)"
    return Regenerated(chosen, lines, comparison)


def _class_difference(rendered: dict[str, str], expected: dict[str, str], tmp: Path, root: Path, folder: str,
                      same_environment: bool) -> str | None:
    if rendered.keys() != expected.keys():
        extra, absent = sorted(rendered.keys() - expected.keys()), sorted(expected.keys() - rendered.keys())
        return (f"regenerated images {', '.join(extra) or 'none'} are not in the manifest, and "
                f"{', '.join(absent) or 'none'} of the manifest were not regenerated")
    changed = [name for name in sorted(rendered) if rendered[name] != expected[name]]
    if not changed:
        return None
    if same_environment:
        return f"{len(changed)} of {len(rendered)} images differ in bytes, e.g. {changed[0]}"
    far = [name for name in changed if _pixel_difference(tmp / name, root, f"{folder}/{name}") > PIXEL_TOLERANCE]
    return f"{len(far)} images differ by more than {PIXEL_TOLERANCE}/255, e.g. {far[0]}" if far else None


def _pixel_difference(regenerated: Path, root: Path, relative: str) -> int:
    from PIL import Image

    with open_inside(root, relative) as handle, Image.open(handle) as on_disk, Image.open(regenerated) as fresh:
        a, b = np.asarray(on_disk.convert("RGB"), np.int16), np.asarray(fresh.convert("RGB"), np.int16)
    return 255 if a.shape != b.shape else int(np.abs(a - b).max())


def _same_environment(provenance: dict, cfg: DictConfig, device: str) -> bool:
    """Whether torch, CUDA and the device kind are those the run recorded (then bytes must match)."""
    import torch
    from omegaconf import OmegaConf

    run_device = str(OmegaConf.select(cfg, "device", default="auto"))
    same_device = run_device == "auto" or run_device.split(":")[0] == str(device).split(":")[0]
    return provenance.get("torch") == torch.__version__ and provenance.get("cuda") == torch.version.cuda and same_device


def _load_small_json(run_dir: Path, name: str) -> dict:
    import json

    with open_inside(run_dir, name) as handle:
        data = handle.read(1 << 20)
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{run_dir / name} is not a JSON file of exfacegan") from None
    if not isinstance(payload, dict):
        raise DataError(f"{run_dir / name} is not a JSON object")
    return payload


def _load_boundaries(run_dir: Path) -> dict[str, np.ndarray]:
    import zipfile

    try:
        with open_inside(run_dir, "fit/boundaries.npz") as handle, np.load(handle, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("reference_latents", "normals", "valid")}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise DataError(f"{run_dir}/fit/boundaries.npz is not a boundaries file ({error})") from None
    arrays["valid"] = arrays["valid"].astype(bool)
    if arrays["normals"].shape != arrays["reference_latents"].shape or len(arrays["valid"]) != len(arrays["normals"]):
        raise DataError(f"{run_dir}/fit/boundaries.npz holds arrays of mismatched shapes")
    return arrays


def needed_weights(filter_active: bool) -> tuple[str, ...]:
    """Config keys (prefixes) of the weights the generate stage reads."""
    return ("gan.", "align.", "filter.judge.", "embedder.") if filter_active else ("gan.", "align.")


def check_weights(cfg: DictConfig, provenance: dict, filter_active: bool) -> None:
    """Each weights file generation reads has the SHA-256 provenance.json recorded for it, else CheckpointError."""
    from exfacegan.provenance import checkpoint_paths
    from exfacegan.weights import sha256_of

    recorded = provenance.get("checkpoints")
    if not isinstance(recorded, dict):
        raise DataError("provenance.json has no checkpoints record; cannot check the weights")
    prefixes = needed_weights(filter_active)
    named = {key: path for key, path in checkpoint_paths(cfg).items() if key.startswith(prefixes)}
    for key in sorted(set(recorded) - set(named)):
        if key.startswith(prefixes):
            entry = recorded[key] if isinstance(recorded[key], dict) else {}
            raise CheckpointError(f"{key}: the weights file {entry.get('path')} recorded in provenance.json is gone")
    for key, path in sorted(named.items()):
        entry = recorded.get(key)
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise CheckpointError(f"{key}: provenance.json records no SHA-256 for {path}; cannot prove the weights")
        actual = sha256_of(path)
        if actual != entry["sha256"]:
            raise CheckpointError(f"{key}: {path} has SHA-256 {actual}, provenance.json records "
                                  f"{str(entry['sha256'])[:64]}: not the weights this run was made with")


def stale_stages(cfg: DictConfig, run_dir: Path) -> dict[str, str]:
    """Stages whose recorded fingerprint is not the one config.yaml gives (settings changed after the run)."""
    from exfacegan.app import stage_fingerprints
    from exfacegan.pipeline import FINGERPRINT_FILE

    expected = stage_fingerprints(cfg)
    stale = {}
    for stage in ("sample", "label", "fit", "generate"):
        recorded = _load_small_json(run_dir, f"{stage}/{FINGERPRINT_FILE}").get("fingerprint") \
            if (run_dir / stage / FINGERPRINT_FILE).exists() else None
        if recorded != expected[stage]:
            stale[stage] = f"fingerprint {recorded}, config.yaml gives {expected[stage]}"
    return stale


def summary(listing: Listing, outcome: Outcome) -> str:
    kinds = {kind: sum(line.startswith(f"{kind}:") for line in outcome.lines)
             for kind in ("missing", "altered", "unlisted")}
    if outcome.clean:
        return f"verified {outcome.checked} files of {listing.root} against {listing.table}: all match"
    return (f"{listing.root}: {outcome.checked} files hashed against {listing.table}; "
            + ", ".join(f"{count} {kind}" for kind, count in kinds.items()))
