"""The training loop: margin-softmax SGD, per-step LR schedule, autocast on GPU, DDP, per-epoch checkpoints.

Resume is exact at epoch boundaries: the sampler order and every random draw of an epoch (augmentation,
dropout) depend only on (seed, epoch, rank), and the checkpoint holds model, head, optimizer, schedule
and loss-scaler state with the epoch and step counters.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from exfacegan.data.artifacts import atomic_path
from exfacegan.errors import CheckpointError, ConfigError, DataError
from exfacegan.loggers import NullLogger
from exfacegan.precision import autocast
from exfacegan.train.distributed import Processes, all_mean

log = logging.getLogger("exfacegan.train")


class MarginModel(nn.Module):
    """Backbone -> margin head -> cross-entropy. The head and the loss always run in float32."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = self.backbone(images)
        with torch.autocast(images.device.type, enabled=False):
            return F.cross_entropy(self.head(embeddings.float(), labels), labels)


def step_decay(optimizer: torch.optim.Optimizer, steps_per_epoch: int, milestones: Sequence[float],
               gamma: float = 0.1, warmup_epochs: float = 0.0,
               unit: str = "epoch") -> torch.optim.lr_scheduler.LambdaLR:
    """LR factor per optimizer step: linear warmup over `warmup_epochs`, then x`gamma` at each milestone.
    Milestones count epochs (`unit="epoch"`, as in the paper) or optimizer steps (`unit="step"`)."""
    if unit not in ("epoch", "step"):
        raise ConfigError(f"schedule.unit must be epoch or step, got {unit!r}")
    per_unit = steps_per_epoch if unit == "epoch" else 1
    milestone_steps = sorted(round(m * per_unit) for m in milestones)
    warmup_steps = round(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return warm * gamma ** sum(step >= m for m in milestone_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def load_for_resume(path: Path, config: dict[str, Any], resume: bool | str) -> dict[str, Any] | None:
    """The checkpoint to resume from: `resume=auto` takes `path` if it exists, `true` requires it, `false`
    ignores it. A checkpoint written under another `config` is refused, naming the differing keys."""
    mode = str(resume).lower()
    if mode not in ("auto", "true", "false"):
        raise ConfigError(f"resume must be auto, true or false, got {resume!r}")
    if mode == "false" or (mode == "auto" and not path.is_file()):
        return None
    if not path.is_file():
        raise CheckpointError(f"resume=true but there is no checkpoint {path}; train without resume first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    saved = state.get("config", {})
    differ = sorted(key for key in set(config) | set(saved) if config.get(key) != saved.get(key))
    if differ:
        raise CheckpointError(f"{path} was trained with another config ({', '.join(differ[:6])} differ); "
                              "set out_dir to a new folder, or resume=false to start over there")
    return state


@dataclass(eq=False, kw_only=True)
class Trainer:
    """Runs the epochs: forward, backward, step; checkpoints after each epoch (see the module docstring)."""

    model: MarginModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    checkpoint: Path
    processes: Processes = field(default_factory=Processes)
    autocast_dtype: torch.dtype | None = None  # None: float32
    channels_last: bool = False
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    clip_grad_norm: float | None = None
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # stored in the checkpoint, compared on resume
    logger: Any = field(default_factory=NullLogger)
    log_every: int = 50
    epoch: int = 0
    step: int = 0

    def __post_init__(self) -> None:
        self.checkpoint = Path(self.checkpoint)
        device = self.processes.device
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        self.runner: nn.Module = self.model
        if self.processes.distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            self.runner = DistributedDataParallel(self.model, device_ids=device_ids)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "step": self.step, "config": self.config}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def save(self) -> None:
        with atomic_path(self.checkpoint) as tmp:
            torch.save(self.state_dict(), tmp)

    def fit(self, loader: Iterable, epochs: int,
            on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> list[float]:
        """Train epochs self.epoch+1..epochs; rank 0 calls `on_epoch_end(record)` and then checkpoints.
        Returns this process's per-step losses."""
        losses: list[float] = []
        set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
        while self.epoch < epochs:
            if set_epoch is not None:
                set_epoch(self.epoch)
            batches = iter(loader)  # may draw worker seeds from the global RNG, on some epochs only: seed after
            torch.manual_seed(self.seed + 1_000_003 * self.epoch + self.processes.rank)
            self.model.train()
            start, epoch_losses, images = time.perf_counter(), [], 0
            for batch_images, labels in batches:
                epoch_losses.append(self._step(batch_images, labels))
                images += len(labels) * self.processes.world_size
                self.step += 1
                if self.processes.is_main and self.step % self.log_every == 0:
                    self._log_step(epoch_losses[-1], images / (time.perf_counter() - start))
            if not epoch_losses:
                raise DataError("the training loader gave no batch in an epoch; lower batch_size")
            self.epoch += 1
            step_losses = torch.stack(epoch_losses).float()
            record = {"epoch": self.epoch, "step": self.step, "steps_per_epoch": len(epoch_losses),
                      "loss": float(all_mean(step_losses.mean(), self.processes)),
                      "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start,
                      "images_per_second": images / (time.perf_counter() - start)}
            if self.processes.is_main:
                log.info("epoch %d/%d: step %d, loss %.4f, %.1f images/s", self.epoch, epochs, self.step,
                         record["loss"], record["images_per_second"])
                if on_epoch_end is not None:
                    on_epoch_end(record)
                self.save()
            self.processes.barrier()
            losses += step_losses.tolist()
        return losses

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        device = self.processes.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if self.augment is not None:
            images = self.augment(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.autocast_dtype, device):
            loss = self.runner(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.backbone.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach()

    def _log_step(self, loss: torch.Tensor, images_per_second: float) -> None:
        metrics = {"loss": float(loss), "lr": self.optimizer.param_groups[0]["lr"], "epoch": self.epoch,
                   "step": self.step, "images_per_second": images_per_second}
        log.info("step %d: loss %.4f, lr %.4g, %.1f images/s", self.step, metrics["loss"], metrics["lr"],
                 images_per_second)
        self.logger.log_metrics(metrics, "train")
