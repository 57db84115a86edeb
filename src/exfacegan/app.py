"""Wiring: from a composed config to stage calls. No method logic lives here."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from exfacegan.config import validate_config
from exfacegan.data import run_artifacts
from exfacegan.data.artifacts import load_json, save_json, save_text
from exfacegan.devices import resolve_device
from exfacegan.gans.latent import Truncation
from exfacegan.loggers import build_logger
from exfacegan.metrics.sweep_table import TIMINGS_FILE
from exfacegan.pipeline import RunDirectory, StageCache, fingerprint
from exfacegan.metrics.report import stamp_stage_lines
from exfacegan.provenance import RunProvenance
from exfacegan.cli.sweep import records_outcome

log = logging.getLogger("exfacegan")

STAGES = ("sample", "label", "fit", "generate", "merge", "analyze")
# The finished stages each stage reads.
UPSTREAM = {"label": ("sample",), "fit": ("sample", "label"), "generate": ("fit",), "analyze": ("fit", "generate")}
# Settings that change speed, placement or the preview, never results: left out of fingerprints, so that
# changing them keeps finished stages.
VOLATILE_KEYS = {
    "batch_size", "device", "n_jobs", "chunk_size", "num_workers", "shard", "num_shards", "references_per_chunk",
    "memory_budget_gb", "progress", "preview",
    "compile",  # torch.compile: the same results within 1e-4 (tests/test_compiled.py)
}


def _stable(node: Any) -> Any:
    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if isinstance(container, dict):
        return {k: _stable(v) for k, v in container.items() if k not in VOLATILE_KEYS}
    if isinstance(container, list):
        return [_stable(v) for v in container]
    return container


def stage_fingerprints(cfg: DictConfig) -> dict[str, str]:
    """Each stage's fingerprint covers its own settings and those of every stage upstream."""
    from exfacegan.stages.identity_filter import identity_controls_payload

    gan = _stable({k: v for k, v in cfg.gan.items() if k != "small"})
    boundary = _stable(cfg.boundary)
    margin = boundary.pop("margin", 0.0)
    label_align = {"label_align": _stable(cfg.label_align)} if cfg.get("label_align") is not None else {}
    sample = fingerprint({"gan": gan, "embedder": _stable(cfg.embedder), "align": _stable(cfg.align), "sample": _stable(cfg.sample), **label_align})
    controls_label, controls_generate = identity_controls_payload(cfg)
    label = fingerprint({"up": sample, "label": _stable(cfg.label), "margin": margin, **controls_label})
    fit = fingerprint({"up": label, "boundary": boundary, **_stable(cfg.fit)})
    sampling = _stable(cfg.sampling)
    if (sampling.get("pose") or {}).get("yaw_range") is None:  # off: the fingerprint of runs from before the setting
        sampling.pop("pose", None)
    generate = fingerprint({"up": fit, "gan": gan, "align": _stable(cfg.align), "sampling": sampling, "dataset": _stable(cfg.dataset), **_stable(controls_generate)})
    analyze = fingerprint({"up": generate, "analyze": _stable(cfg.analyze), "embedder": _stable(cfg.embedder)})
    return {"sample": sample, "label": label, "fit": fit, "generate": generate, "merge": generate, "analyze": analyze}


@dataclass
class Components:
    """Networks built on first use, so that skipped stages load nothing."""

    cfg: DictConfig
    device: torch.device
    _built: dict[str, Any] = field(default_factory=dict)

    def _get(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def _network(self, node: DictConfig, compile_with: Callable[[torch.nn.Module], torch.nn.Module] | None = None
                 ) -> torch.nn.Module:
        module = instantiate(node, _convert_="all")
        module = module.eval().requires_grad_(False).to(self.device)
        return module if compile_with is None else compile_with(module)

    def _compiler(self, group: DictConfig | None, what: str) -> Callable[[torch.nn.Module], torch.nn.Module] | None:
        if group is None or not group.get("compile", False):
            return None
        from exfacegan import compiled

        return compiled.compile_generator if what == "generator" else compiled.compile_embedder

    @property
    def generator(self) -> torch.nn.Module:
        return self._get("generator", lambda: self._network(self.cfg.gan.network, self._compiler(self.cfg.gan, "generator")))

    @property
    def embedder(self) -> torch.nn.Module:
        return self._get("embedder", lambda: self._network(self.cfg.embedder.network,
                                                           self._compiler(self.cfg.embedder, "embedder")))

    @property
    def judge(self) -> torch.nn.Module:
        judge = self.cfg.analyze.get("judge")
        return self.embedder if judge is None else self._get(
            "judge", lambda: self._network(judge.network, self._compiler(judge, "embedder")))

    @property
    def filter_judge(self) -> torch.nn.Module:
        judge = OmegaConf.select(self.cfg, "filter.judge", default=None)
        return self.embedder if judge is None else self._get(
            "filter_judge", lambda: self._network(judge.network, self._compiler(judge, "embedder")))

    @property
    def aligner(self) -> torch.nn.Module:
        return self._get("aligner", lambda: self._network(self.cfg.align))

    @property
    def label_aligner(self) -> torch.nn.Module:
        """The sample (labelling) stage's aligner: `label_align` when a config sets it, else `align`."""
        node = self.cfg.get("label_align")
        return self.aligner if node is None else self._get("label_aligner", lambda: self._network(node))


def _truncation(cfg: DictConfig) -> Truncation:
    return Truncation(**OmegaConf.to_container(cfg.gan.truncation, resolve=True))


def run_sample(cfg: DictConfig, run: RunDirectory, out: Path, parts: Components, logger: Any) -> None:
    from exfacegan.stages.sample import sample

    artifacts = sample(
        out, parts.generator, parts.label_aligner, parts.embedder,
        num_samples=cfg.sample.num_samples, seed=cfg.sample.seed, truncation=_truncation(cfg),
        noise_mode=cfg.gan.noise_mode, precision=cfg.gan.precision, batch_size=cfg.sample.batch_size,
        device=parts.device, preview=cfg.sample.preview, randomize_attributes=cfg.sample.randomize_attributes,
        z_stream=cfg.sample.get("z_stream", "seeded"),
    )
    found = np.load(artifacts.latents)["found"]
    logger.log_metrics({"num_samples": len(found), "faces_found": int(found.sum())}, "sample")
    logger.log_image("sample/preview", artifacts.preview)


def run_label(cfg: DictConfig, run: RunDirectory, out: Path, parts: Components, logger: Any) -> None:
    from exfacegan.stages.label import label

    run.require("sample")
    sizes = run_artifacts.config_sizes(cfg)
    found = run_artifacts.sample_latents(run.root, sizes)["found"]
    embeddings = run_artifacts.sample_embeddings(run.root, sizes)
    artifacts = label(
        out, embeddings, found,
        num_references=cfg.label.num_references, pool_size=cfg.label.get("pool_size"), threshold=cfg.label.threshold,
        margin=cfg.boundary.margin, chunk_size=cfg.label.chunk_size,
        max_similarity=OmegaConf.select(cfg, "references.max_similarity", default=None), device=parts.device,
        **_real_bound(cfg, embeddings, parts),
    )
    labels = np.load(artifacts.labels)["labels"]
    if (out / "stats.json").is_file():
        logger.log_metrics(load_json(out / "stats.json"), "label")
    logger.log_metrics({
        "references": labels.shape[0],
        "similar_fraction": float((labels == 1).sum() / max((labels >= 0).sum(), 1)),
        "left_out_fraction": float((labels < 0).mean()),
    }, "label")


def _real_bound(cfg: DictConfig, embeddings: np.ndarray, parts: Components) -> dict[str, Any]:
    """references.max_real_similarity: each sampled code's nearest real identity in references.real_gallery, by
    the run's embedder (the gallery embedded once and cached, as `exfacegan audit` does)."""
    bound = OmegaConf.select(cfg, "references.max_real_similarity", default=None)
    if bound is None:
        return {}
    from exfacegan.data.gallery import load_gallery
    from exfacegan.metrics.nearest import nearest
    from exfacegan.weights import cache_dir

    gallery = load_gallery(cfg.references.real_gallery, parts.embedder, cache_dir=cache_dir() / "audit",
                           batch_size=cfg.sample.batch_size, device=parts.device)
    return {"max_real_similarity": float(bound),
            "real_similarity": nearest(embeddings, gallery.embeddings, device=parts.device).score}


def run_fit(cfg: DictConfig, run: RunDirectory, out: Path, parts: Components, logger: Any) -> None:
    from exfacegan.stages.fit import fit

    run.require("sample")
    run.require("label")
    sizes = run_artifacts.config_sizes(cfg)
    latents = run_artifacts.sample_latents(run.root, sizes)["w"]
    labelled = run_artifacts.labels(run.root, sizes)
    options = OmegaConf.to_container(cfg.boundary, resolve=True)
    options.pop("margin")
    solver = options.pop("solver")
    if "device" in options:
        options["device"] = str(parts.device) if options["device"] == "auto" else options["device"]
    pairing = cfg.fit.get("pairing", "reference")
    poses = run_artifacts.sample_poses(run.root, sizes)
    artifacts = fit(out, latents, labelled["labels"], labelled["references"], solver=solver,
                    references_per_chunk=cfg.fit.references_per_chunk, pairing=pairing, poses=poses, **options)
    if artifacts.pose_direction is not None:
        with np.load(artifacts.pose_direction) as pose:
            log.info("yaw direction in w: R² %.3f (in-sample) over %d codes with a pose", pose["r2"], pose["count"])
            logger.log_metrics({"pose_direction_r2": float(pose["r2"]), "pose_direction_codes": int(pose["count"])},
                               "fit")
    result = np.load(artifacts.boundaries)
    valid = result["valid"]
    moved = int((result["paired_codes"] != result["references"]).sum())
    if moved:
        log.info("fit.pairing=%s: %d of %d boundaries move another code than their reference's", pairing, moved, len(valid))
    logger.log_metrics({
        "pairing_moved_references": moved,
        "val_accuracy_mean": float(result["val_accuracy"][valid].mean()) if valid.any() else float("nan"),
        "train_accuracy_mean": float(result["train_accuracy"][valid].mean()) if valid.any() else float("nan"),
        "invalid_references": int((~valid).sum()),
    }, "fit")


def run_generate(cfg: DictConfig, run: RunDirectory, out: Path, parts: Components, logger: Any) -> bool:
    from exfacegan.stages.generate import GenerateSpec, generate
    from exfacegan.stages.identity_filter import IdentityFilterSpec, identity_filter_tests

    run.require("fit")
    boundaries = run_artifacts.boundaries(run.root, run_artifacts.config_sizes(cfg))
    latents, normals, spec = boundaries["reference_latents"], boundaries["normals"], GenerateSpec.from_config(cfg)
    filter_spec = IdentityFilterSpec.from_config(cfg)
    accept = identity_filter_tests(filter_spec, parts.filter_judge, parts.generator, parts.aligner, latents, normals,
                                   spec, parts.device) if filter_spec.active else []
    pose = None
    if spec.offsets.pose.active and not hasattr(parts.generator, "attribute_ranges"):  # GAN-Control: its controller
        from exfacegan.stages.pose_direction import POSE_DIRECTION_FILE, load_pose_shift

        pose = load_pose_shift(run.root / "fit" / POSE_DIRECTION_FILE, len(normals), normals.shape[1])
    artifacts = generate(out, parts.generator, parts.aligner, reference_latents=latents, normals=normals,
                         valid=boundaries["valid"], spec=spec, accept=accept, device=parts.device, pose=pose)
    if artifacts is not None:
        _record_pose_targets(out, spec, parts)
        _log_generate_stats(artifacts.stats, logger)
    return artifacts is not None


def run_merge(cfg: DictConfig, run: RunDirectory, out: Path, parts: Components, logger: Any) -> bool:
    from exfacegan.stages.generate import GenerateSpec, finalize

    artifacts = finalize(out)
    _record_pose_targets(out, GenerateSpec.from_config(cfg), parts)
    _log_generate_stats(artifacts.stats, logger)
    return True


def _record_pose_targets(out: Path, spec: Any, parts: Components) -> None:
    if spec.offsets.pose.active:
        from exfacegan.stages.generate import is_controlled
        from exfacegan.stages.pose_targets import record_pose_targets

        record_pose_targets(out, spec.offsets, is_controlled(parts.generator))


def _log_generate_stats(stats_path: Path, logger: Any) -> None:
    import json

    logger.log_metrics(json.loads(Path(stats_path).read_text()), "generate")


def run_analyze(cfg: DictConfig, run: RunDirectory, out: Path, parts: Components, logger: Any) -> None:
    from exfacegan.stages.analyze import analyze_run

    if (run.root / "fit" / "boundaries.npz").is_file():  # optional: a dataset is analysed without its boundaries
        run_artifacts.boundaries(run.root, {}, run_artifacts.BOUNDARY_ACCURACIES)  # readable, one length
    run_artifacts.generate_outputs(run.root)
    options = {k: v for k, v in OmegaConf.to_container(cfg.analyze, resolve=True).items() if k != "judge"}
    metrics = analyze_run(run.root, out, parts.judge, device=parts.device, **options)
    logger.log_metrics({k: v for k, v in metrics.items() if not isinstance(v, (dict, str))}, "analyze")
    for figure in sorted(out.glob("*.png")):
        logger.log_image(f"analyze/{figure.stem}", figure)


RUNNERS: dict[str, Callable[..., Any]] = {
    "sample": run_sample, "label": run_label, "fit": run_fit,
    "generate": run_generate, "merge": run_merge, "analyze": run_analyze,
}


@records_outcome
def run_pipeline(cfg: DictConfig) -> RunDirectory:
    validate_config(cfg)
    stages = [stage for stage in STAGES if stage in cfg.stages]
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    root = Path(cfg.run_dir) if cfg.run_dir else Path(hydra_cfg.runtime.output_dir)
    run = RunDirectory(root)
    fingerprints = stage_fingerprints(cfg)
    if not cfg.overwrite:  # refuse before this config is recorded in the run directory
        for stage in stages:
            run.check_finished("generate" if stage == "merge" else stage, fingerprints[stage])
    root.mkdir(parents=True, exist_ok=True)
    save_text(root / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    provenance = RunProvenance(root, cfg)
    provenance.save()
    cache = StageCache(Path(cfg.cache_dir)) if cfg.cache_dir else None
    parts = Components(cfg, resolve_device(cfg.device, _parallel_job_number(hydra_cfg)))
    logger = _logger(cfg, root, hydra_cfg)
    try:
        for stage in stages:
            _run_stage(stage, cfg, run, fingerprints, cache, parts, logger, provenance)
    finally:
        logger.finish()
    return run


def _run_stage(stage: str, cfg: DictConfig, run: RunDirectory, fingerprints: dict[str, str],
               cache: StageCache | None, parts: Components, logger: Any, provenance: RunProvenance) -> None:
    stage_dir = "generate" if stage == "merge" else stage
    expected = fingerprints[stage]
    finished = run.finished_fingerprint(stage_dir)
    if finished == expected:
        log.info("%s: up to date in %s, skipped", stage, run.stage_dir(stage_dir))
        return
    if stage == "merge" and not run.partial_dir("generate").is_dir():
        log.info("merge: no sharded generate stage to merge")
        return
    for needed in UPSTREAM.get(stage_dir, ()):
        run.check_finished(needed, fingerprints[needed], needed_by=stage)
    start = time.perf_counter()
    if stage != "merge" and cache is not None and cache.fetch(stage_dir, expected, run.stage_dir(stage_dir)):
        log.info("%s: reused the cached result %s", stage, cache.entry(stage_dir, expected))
        provenance.record(stage_dir, how="reused", cache_entry=cache.entry(stage_dir, expected))
        if stage == "analyze":  # the report's header tells how this run, not the one that computed it, got each stage
            if stamp_stage_lines(run.stage_dir(stage_dir) / "report.html", provenance.lines()):
                provenance.note_rewritten(stage_dir, "report.html")
        _record_time(run.root, stage, time.perf_counter() - start, "cached", logger)
        return
    out = run.begin(stage_dir, expected, overwrite=cfg.overwrite)
    log.info("%s: running in %s", stage, out)
    complete = RUNNERS[stage](cfg, run, out, parts, logger)
    _record_time(run.root, stage, time.perf_counter() - start, "ran" if complete is not False else "partial", logger)
    if complete is False:
        return
    if stage == "analyze":
        stamp_stage_lines(out / "report.html", provenance.lines(pending=stage_dir))
    run.commit(stage_dir)
    provenance.record(stage_dir, how="computed")
    if cache is not None:
        cache.store(stage_dir, expected, run.stage_dir(stage_dir))
    log.info("%s: done, in %s", stage, run.stage_dir(stage_dir))
    if stage == "analyze":
        log.info("open the identity report: %s", run.stage_dir(stage_dir) / "report.html")


def _record_time(root: Path, stage: str, seconds: float, how: str, logger: Any) -> None:
    """Wall time of a stage's last execution in this run folder, in `timings.json` (and the W&B summary)."""
    path = root / TIMINGS_FILE
    timings = _earlier_timings(path)
    timings[stage] = {"seconds": round(seconds, 3), "how": how}
    save_json(path, timings)
    logger.log_metrics({"seconds": round(seconds, 3)}, stage)


def _earlier_timings(path: Path) -> dict[str, Any]:
    """timings.json as an earlier invocation left it; a damaged one is started afresh (it is only a record)."""
    if not path.is_file():
        return {}
    try:
        timings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        timings = None
    if not isinstance(timings, dict):
        log.warning("%s is not readable JSON; it is started afresh", path)
        return {}
    return timings


def _parallel_job_number(hydra_cfg: Any) -> int | None:
    """The job's number when jobs of a sweep run side by side on this machine (the joblib launcher)."""
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    return int(hydra_cfg.job.num) if "joblib" in launcher.lower() else None


def _logger(cfg: DictConfig, root: Path, hydra_cfg: Any) -> Any:
    group = name = None
    if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN:
        group = Path(hydra_cfg.sweep.dir).name
        name = ",".join(hydra_cfg.overrides.task) or None
    return build_logger(cfg.logger, name=name, group=group, dir=str(root),
                        config=OmegaConf.to_container(cfg, resolve=True))
