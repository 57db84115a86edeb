"""Wiring of `python -m exfacegan.train`: from a composed config to data, model, evaluation sets and the loop."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from exfacegan.data.artifacts import atomic_path, load_json, save_json
from exfacegan.data.image_folder import ImageFolderDataset
from exfacegan.embedders.arcface import INPUT_SIZE
from exfacegan.errors import CheckpointError, ConfigError, DataError
from exfacegan.loggers import NullLogger, build_logger
from exfacegan.precision import autocast_dtype, check_precision
from exfacegan.train.augment import BatchAugment, RandAugment
from exfacegan.train.data import load_images, open_dataset, split_holdout, train_loader, verification_pairs
from exfacegan.train.distributed import Processes, init_processes, same_everywhere
from exfacegan.train.evaluation import N_FOLDS, VerificationSet, evaluate
from exfacegan.train.loop import MarginModel, Trainer, load_for_resume

log = logging.getLogger("exfacegan.train")

# Keys that change speed, placement or reporting, never the trained weights: a checkpoint resumes across them.
RESUMABLE_KEYS = ("data.num_workers", "eval.", "logger", "resume", "out_dir", "epochs", "log_every", "device",
                  "precision", "channels_last")


def resume_config(cfg: DictConfig, holdout_fraction: float) -> dict[str, Any]:
    """The flat settings a checkpoint must share with the run that resumes it."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    flat = {k: v for k, v in flat.items() if not any(k == r or k.startswith(r) for r in RESUMABLE_KEYS)}
    flat["holdout_fraction"] = holdout_fraction
    return flat


def verification_sets(cfg: DictConfig, targets: list[str], dataset: ImageFolderDataset,
                      held_out: Any) -> list[VerificationSet]:
    root = Path(cfg.eval.root or ".")
    sets = [VerificationSet.from_bin(root / f"{name}.bin", INPUT_SIZE) for name in targets]
    if len(held_out):
        pairs, issame = verification_pairs(dataset.labels[held_out], cfg.eval.max_pairs, cfg.seed)
        if len(pairs) < N_FOLDS:
            raise DataError(f"the held-out images give {len(pairs)} verification pairs, fewer than {N_FOLDS}: "
                            "raise eval.holdout_fraction or give .bin files in eval.targets")
        sets.append(VerificationSet("holdout", load_images(dataset, held_out), pairs, issame))
    return sets


class EpochEnd:
    """Called by the trainer after every epoch (rank 0): evaluates, logs, and rewrites `eval.json`
    with one record per finished epoch (records after the resumed `epoch` are dropped)."""

    def __init__(self, path: Path, epoch: int, backbone: torch.nn.Module, sets: list[VerificationSet], logger: Any,
                 world_size: int, **embed_options: Any) -> None:
        self.path, self.backbone, self.sets, self.logger = path, backbone, sets, logger
        self.world_size, self.embed_options = world_size, embed_options
        previous = load_json(path)["epochs"] if epoch > 0 and path.is_file() else []
        self.records = [r for r in previous if r["epoch"] <= epoch]

    def __call__(self, record: dict[str, Any]) -> None:
        record["world_size"] = self.world_size
        record["eval"] = evaluate(self.backbone, self.sets, **self.embed_options)
        for name, result in record["eval"].items():
            log.info("epoch %d %s: accuracy %.4f +- %.4f, threshold %.3f (%d pairs)", record["epoch"], name,
                     result["accuracy"], result["std"], result["best_threshold"], result["pairs"])
        self.records.append(record)
        save_json(self.path, {"epochs": self.records})
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        metrics.update({f"{name}_{key}": result[key] for name, result in record["eval"].items()
                        for key in ("accuracy", "std", "best_threshold")})
        self.logger.log_metrics(metrics, "epoch")


def _checked_targets(cfg: DictConfig) -> list[str]:
    """The evaluation .bin names, after the checks that need no data (before anything is loaded)."""
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ConfigError("data.root is required: python -m exfacegan.train data.root=<folder of identity folders>")
    check_precision(cfg.precision, allow_auto=True)
    targets = [cfg.eval.targets] if isinstance(cfg.eval.targets, str) else list(cfg.eval.targets or [])
    if targets and not cfg.eval.root:
        raise ConfigError(f"eval.targets={targets} needs eval.root, the folder holding <name>.bin")
    missing = [name for name in targets if not (Path(cfg.eval.root) / f"{name}.bin").is_file()]
    if missing:
        raise DataError(f"no {', '.join(f'{name}.bin' for name in missing)} in eval.root={cfg.eval.root}")
    return targets


def _logger(cfg: DictConfig, out_dir: Path, processes: Processes) -> Any:
    if not processes.is_main:
        return NullLogger()
    return build_logger(cfg.logger, name=out_dir.name, dir=str(out_dir),
                        config=OmegaConf.to_container(cfg, resolve=True))


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) in cfg.out_dir; returns the last epoch record (rank 0) or {}."""
    targets = _checked_targets(cfg)
    processes = init_processes(cfg.device)
    if not processes.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    device, out_dir = processes.device, Path(cfg.out_dir)

    # Loader (and the verification sets: .bin targets, else held-out images of the training folder)
    dataset = open_dataset(cfg.data.root, size=INPUT_SIZE)
    holdout_fraction = 0.0 if targets else float(cfg.eval.holdout_fraction)
    train_indices, held_out = split_holdout(dataset.labels, holdout_fraction, cfg.seed)
    loader = train_loader(dataset, train_indices, cfg.batch_size, rank=processes.rank,
                          world_size=processes.world_size, num_workers=cfg.data.num_workers, seed=cfg.seed,
                          pin_memory=device.type == "cuda")
    sets = verification_sets(cfg, targets, dataset, held_out) if processes.is_main else []
    if processes.is_main and not sets:
        log.warning("no verification set (no eval.targets, no held-out images): training without evaluation")

    # Backbone
    torch.manual_seed(cfg.seed)
    backbone = instantiate(cfg.model, _convert_="all")

    # Margin head + optimizer
    head = instantiate(cfg.head, embedding_dim=backbone.num_features, num_classes=len(dataset.classes))
    channels_last = bool(cfg.channels_last) and device.type == "cuda"
    model = MarginModel(backbone, head).to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    optimizer = instantiate(cfg.optimizer, _convert_="all")([p for p in model.parameters() if p.requires_grad])

    # Schedule
    scheduler = instantiate(cfg.schedule, _convert_="all")(optimizer, steps_per_epoch=len(loader))

    # Resume
    config = resume_config(cfg, holdout_fraction)
    state = load_for_resume(out_dir / "last.pt", config, cfg.resume)
    logger = _logger(cfg, out_dir, processes)
    dtype = autocast_dtype(cfg.precision, device, allow_auto=True)
    randaugment = RandAugment(**cfg.augment.randaugment) if cfg.augment.randaugment else None
    trainer = Trainer(model=model, optimizer=optimizer, scheduler=scheduler, checkpoint=out_dir / "last.pt",
                      processes=processes, autocast_dtype=dtype, channels_last=channels_last,
                      augment=BatchAugment(cfg.augment.flip, randaugment), clip_grad_norm=cfg.clip_grad_norm,
                      seed=cfg.seed, config=config, logger=logger, log_every=cfg.log_every)
    if state is not None:
        trainer.load_state_dict(state)
    if not same_everywhere((trainer.epoch, trainer.step), processes):
        raise CheckpointError(f"the processes found different checkpoints in out_dir={out_dir}; "
                              "put out_dir on a file system that every node shares")
    if state is not None:
        log.info("resumed from %s at epoch %d, step %d", out_dir / "last.pt", trainer.epoch, trainer.step)
    log.info("%d identities, %d training images (%d held out), %d steps per epoch of %d images on %d process(es), "
             "%s, %s", len(dataset.classes), len(train_indices), len(held_out), len(loader), cfg.batch_size,
             processes.world_size, device, dtype or torch.float32)

    # Loop
    epoch_end = EpochEnd(out_dir / "eval.json", trainer.epoch, backbone, sets, logger, processes.world_size,
                         batch_size=cfg.eval.batch_size, flip=cfg.eval.flip, device=device, autocast_dtype=dtype,
                         channels_last=channels_last)
    try:
        trainer.fit(loader, cfg.epochs, epoch_end)
        if processes.is_main:
            with atomic_path(out_dir / "backbone.pt") as tmp:
                torch.save(backbone.state_dict(), tmp)
            _log_done(epoch_end.records, out_dir)
    finally:
        logger.finish()
    return epoch_end.records[-1] if processes.is_main and epoch_end.records else {}


def _log_done(records: list[dict[str, Any]], out_dir: Path) -> None:
    if records:
        first, last = records[0], records[-1]
        log.info("done: epoch %d, step %d; mean loss %.4f (epoch 1) -> %.4f (epoch %d); %s",
                 last["epoch"], last["step"], first["loss"], last["loss"], last["epoch"], out_dir)
