"""`exfacegan compare <sweep_dir> [--wandb]`: the comparison page of a multirun (what its callback writes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from exfacegan.errors import DataError


def compare(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from exfacegan.metrics.compare import write_compare
    from exfacegan.cli.sweep import log_sweep

    sweep_dir = Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        raise DataError(f"{sweep_dir} is not a folder; give the folder of a multirun, e.g. multirun/<date>")
    table = write_compare(sweep_dir)
    if args.wandb:
        multirun = sweep_dir / "multirun.yaml"
        node = OmegaConf.select(OmegaConf.load(multirun), "logger") if multirun.is_file() else None
        log_sweep(table, node if node is not None else OmegaConf.create({"_target_": "exfacegan.loggers.WandbLogger"}))
    print(f"{len(table.rows)} jobs ({table.counts()}); swept: {', '.join(table.parameters) or 'nothing'}")
    print(f"compare: {sweep_dir / 'compare.html'}")
    return 0


def add_compare_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="compare.html + compare.json of a multirun sweep folder")
    parser.add_argument("sweep_dir", help="the folder of a multirun (multirun/<date>)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the table to a W&B summary run in the sweep's group (the sweep's logger settings)")
    parser.set_defaults(handler=compare)
