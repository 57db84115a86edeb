"""`exfacegan offsets <run_dir>`: the offset study of a run with a finished fit stage.

    exfacegan offsets <run_dir> [--references K] [--max-off START:STOP:STEP] [--draws 1] [--strips 6]
                      [--device auto] [--batch-size N] [--out DIR]

Rebuilds the run's generator, aligner and embedder (its judge, if it had one) from its config.yaml, renders
the first K valid references along their boundaries (exfacegan.stages.offset_study) and writes
`offsets.json`, `offsets.png` and `offsets.html` into DIR (default `<run_dir>/offsets`), all at once. Logs to
W&B when the run's logger did. --max-off defaults to 0 : 2 x max_off : max_off / 6; the run's max_off is
always one of the offsets.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from exfacegan.errors import ConfigError, DataError

OUT_NAME = "offsets"
DEFAULT_REFERENCES = 16


@dataclass(frozen=True)
class _Plan:
    run_dir: Path
    config_path: Path
    cfg: DictConfig
    spec: object  # GenerateSpec
    boundaries: dict[str, np.ndarray]
    references: np.ndarray
    offsets: np.ndarray
    out: Path
    device: object  # torch.device


def add_offsets_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("offsets", help="similarity to the reference against the offset along the boundary")
    parser.add_argument("run_dir", help="an exfacegan run directory with a finished fit stage")
    parser.add_argument("--references", type=int, default=None,
                        help=f"the first K valid references (default {DEFAULT_REFERENCES}, or all if fewer)")
    parser.add_argument("--max-off", default=None,
                        help="offset magnitudes START:STOP:STEP, STOP included (default 0:2*max_off:max_off/6)")
    parser.add_argument("--draws", type=int, default=1, help="seeded draws of u per reference and offset")
    parser.add_argument("--strips", type=int, default=6, help="references shown as image strips")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="images per render (default: gan.batch_size)")
    parser.add_argument("--out", default=None, help="output folder (default: <run_dir>/offsets)")
    parser.set_defaults(handler=offsets)


def _plan(args: argparse.Namespace) -> _Plan:
    """Every check that needs no network: the run folder, its fit stage, the settings."""
    from exfacegan.devices import resolve_device
    from exfacegan.pipeline import RunDirectory
    from exfacegan.rebuild import load_run_config
    from exfacegan.stages.generate import GenerateSpec
    from exfacegan.stages.offset_study import parse_offsets

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a directory; give an exfacegan run directory")
    saved = load_run_config(run_dir)
    if saved is None:
        raise DataError(f"{run_dir} holds no config.yaml; is it an exfacegan run directory?")
    config_path, cfg = saved
    for key in ("references", "draws", "strips", "batch_size"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
    spec = GenerateSpec.from_config(cfg)
    spec = replace(spec, batch_size=args.batch_size or spec.batch_size)
    max_off = spec.offsets.max_off
    offsets = parse_offsets(args.max_off or f"0:{2 * max_off:g}:{max_off / 6 if max_off else 1:g}", include=max_off)
    with np.load(RunDirectory(run_dir).require("fit") / "boundaries.npz") as npz:
        boundaries = {key: npz[key] for key in ("reference_latents", "normals", "valid", "references")}
    valid = np.flatnonzero(boundaries["valid"])
    if args.references is not None and args.references > len(valid):
        raise ConfigError(f"--references {args.references}: {run_dir} has only {len(valid)} valid boundaries")
    if not len(valid):
        raise DataError(f"{run_dir} has no valid boundary (fit/boundaries.npz: valid=False for all)")
    out = Path(args.out) if args.out else run_dir / OUT_NAME
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "offsets.json").is_file():
        raise ConfigError(f"--out {out} is a folder with other contents than an offset study; give another")
    for key in ("gan.network", "align"):
        if OmegaConf.select(cfg, key) is None:
            raise DataError(f"{config_path} has no {key}; cannot rebuild the run's networks")
    references = valid[: args.references or DEFAULT_REFERENCES]
    return _Plan(run_dir, config_path, cfg, spec, boundaries, references, offsets, out, resolve_device(args.device))


def offsets(args: argparse.Namespace) -> int:
    from exfacegan.cli.networks import run_embedder
    from exfacegan.rebuild import rebuild_network
    from exfacegan.stages.offset_study import offset_study

    began = time.perf_counter()
    plan = _plan(args)
    generator = rebuild_network(plan.cfg.gan.network, plan.config_path, plan.device)
    aligner = rebuild_network(plan.cfg.align, plan.config_path, plan.device)
    embedder = run_embedder(plan.run_dir, plan.device)
    if embedder is None:
        raise DataError(f"{plan.config_path} names no embedder; cannot judge the renders")
    result = offset_study(
        generator, aligner, embedder, reference_latents=plan.boundaries["reference_latents"],
        normals=plan.boundaries["normals"], references=plan.references, offsets=plan.offsets, spec=plan.spec,
        draws=args.draws, strip_references=args.strips, device=plan.device,
    )
    payload = _payload(plan, result, type(embedder).__name__, args.draws, time.perf_counter() - began)
    _write(plan.out, payload, result)
    _log(plan, payload)
    for side in payload["sides"]:
        at = payload["at_max_off"][side]
        print(f"{side} side at max_off={payload['max_off']:g}: mean similarity {_shown(at['mean'])} "
              f"(10-90th percentile {_shown(at['p10'])}-{_shown(at['p90'])})")
    print(f"offset study: {plan.out / 'offsets.html'}")
    return 0


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _payload(plan: _Plan, result, embedder: str, draws: int, wall_s: float) -> dict:
    from exfacegan.stages.offset_study import curve_summary, json_values, side_names

    offsets_spec = plan.spec.offsets
    sides = side_names(offsets_spec)
    curve = dict(zip(sides, curve_summary(result.similarity)))
    at = int(np.flatnonzero(np.isclose(plan.offsets, offsets_spec.max_off))[0])
    return {
        "run_dir": str(plan.run_dir.resolve()), "embedder": embedder, "seed": offsets_spec.seed,
        "mirror": offsets_spec.mirror, "min_off": offsets_spec.min_off, "max_off": offsets_spec.max_off,
        "max_off_index": at, "draws": draws, "offsets": plan.offsets.tolist(), "sides": sides,
        "references": plan.references.tolist(), "num_references": len(plan.references),
        "sample_indices": plan.boundaries["references"][plan.references].tolist(),
        "reference_found": result.reference_found.tolist(),
        "similarity": dict(zip(sides, json_values(result.similarity))),  # [K][draws][offsets]
        "curve": curve,
        "at_max_off": {side: {key: curve[side][key][at] for key in ("mean", "p10", "p90")} for side in sides},
        "renders": int(len(plan.references) * (1 + len(plan.offsets) * len(sides) * draws)),
        "wall_s": round(wall_s, 2),
    }


def _write(out: Path, payload: dict, result) -> None:
    """offsets.png, offsets.json and offsets.html into `<out>.partial`, then renamed onto `out`."""
    from exfacegan.data.artifacts import replace_dir, save_json
    from exfacegan.metrics.offset_report import offsets_figure, write_offsets_page

    partial = out.with_name(f"{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    figure = offsets_figure(partial / "offsets.png", payload, result.reference_faces, result.strip_faces)
    save_json(partial / "offsets.json", payload)
    write_offsets_page(partial, payload, figure)
    replace_dir(partial, out)


def _log(plan: _Plan, payload: dict) -> None:
    """The curve (one step per offset), the values at max_off and the figure, to the run's logger (if any)."""
    from exfacegan.loggers import build_logger

    settings = {key: payload[key] for key in ("seed", "min_off", "max_off", "draws", "offsets", "references")}
    logger = build_logger(OmegaConf.select(plan.cfg, "logger"), name=f"offsets {plan.run_dir.name}",
                          group=None, dir=str(plan.run_dir), config={"offsets": settings})
    try:
        for i, offset in enumerate(payload["offsets"]):
            curve = {f"{side}_{key}": payload["curve"][side][key][i]
                     for side in payload["sides"] for key in ("mean", "p10", "p90")}
            logger.log_metrics({"offset": offset, **curve}, "offsets")
        logger.log_metrics({f"{side}_{key}_at_max_off": value for side, values in payload["at_max_off"].items()
                            for key, value in values.items()}, "offsets")
        logger.log_image("offsets/curve", plan.out / "offsets.png")
    finally:
        logger.finish()
