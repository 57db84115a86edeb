"""Single-process training loop with atomic per-epoch checkpoints and exact resume."""
import os
from pathlib import Path

import torch
from torch import nn

from exfacegan.errors import CheckpointError


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(model: nn.Module, head: nn.Module, loader, epochs: int, out_dir: str | Path, lr: float = 0.1,
          momentum: float = 0.9, weight_decay: float = 5e-4, milestones: tuple = (22, 30, 35),
          resume: bool = False) -> list[float]:
    """SGD with step decay; returns per-step losses of this call."""
    out_dir = Path(out_dir); out_dir.mkdir(parents=True, exist_ok=True)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), 0.1)
    start_epoch, step = 0, 0
    ckpt = out_dir / "last.pt"
    if resume:
        if not ckpt.is_file():
            raise CheckpointError(f"resume: no checkpoint at {ckpt}; train without resume first")
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"]); head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"]); scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"], state["step"]
        torch.set_rng_state(state["rng"])
    losses = []
    for epoch in range(start_epoch, epochs):
        model.train(); head.train()
        for images, labels in loader:
            loss = nn.functional.cross_entropy(head(model(images), labels), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
        scheduler.step()
        save_checkpoint(ckpt, {"model": model.state_dict(), "head": head.state_dict(),
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "epoch": epoch + 1, "step": step, "rng": torch.get_rng_state()})
    return losses
