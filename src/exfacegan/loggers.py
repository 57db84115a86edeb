"""Experiment loggers. Stages call `log_metrics` and `log_image` (a sweep's summary `log_table`); the app always
calls `finish`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig


class NullLogger:
    def log_metrics(self, metrics: dict[str, Any], stage: str) -> None:
        pass

    def log_image(self, name: str, path: Path) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger(NullLogger):
    """One W&B run per Hydra job, grouped by sweep; offline by default (no account needed)."""

    def __init__(
        self,
        project: str = "exfacegan",
        mode: str = "offline",
        entity: str | None = None,
        tags: list[str] | None = None,
        *,
        name: str | None = None,
        group: str | None = None,
        dir: str | Path | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        import wandb

        self._wandb = wandb
        if dir is not None:
            Path(dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project, entity=entity, mode=mode, name=name, group=group, tags=tags,
            dir=str(dir) if dir is not None else None, config=config, reinit="finish_previous",
        )

    def log_metrics(self, metrics: dict[str, Any], stage: str) -> None:
        scalars = {f"{stage}/{key}": value for key, value in metrics.items() if isinstance(value, (int, float))}
        self.run.log(scalars)
        self.run.summary.update(scalars)

    def log_image(self, name: str, path: Path) -> None:
        self.run.log({name: self._wandb.Image(str(path))})

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({name: self._wandb.Table(columns=columns, data=rows, allow_mixed_types=True)})

    def finish(self) -> None:
        self.run.finish()


def build_logger(node: DictConfig | None, **run: Any) -> NullLogger:
    """The logger a config node names, for one run (`name`, `group`, `dir`, `config`); none -> NullLogger."""
    if node is None or str(node.get("_target_", "")).endswith("NullLogger"):
        return NullLogger()
    factory = instantiate(node, _partial_=True, _convert_="all")  # `config=` would clash with instantiate(config)
    return factory(**run)
