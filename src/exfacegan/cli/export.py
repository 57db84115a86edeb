"""`exfacegan export <run_dir> --format rec|webdataset|folder`: a run's dataset for FR trainers."""

from __future__ import annotations

import argparse

from exfacegan.stages.export import FORMATS, export


def run_export(args: argparse.Namespace) -> int:
    result = export(args.run_dir, args.format, args.out, shard_size=args.shard_size)
    print(f"{result.images} images of {result.classes} identities as {args.format} in {result.seconds:.2f} s "
          f"({result.images / max(result.seconds, 1e-9):.0f} images/s): {result.out}")
    return 0


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="a run's dataset as MXNet RecordIO, WebDataset shards or a folder")
    parser.add_argument("run_dir", help="an exfacegan run directory with a finished generate stage")
    parser.add_argument("--format", default="rec", help=f"one of {', '.join(FORMATS)} (default: rec)")
    parser.add_argument("--out", default=None,
                        help="output folder, must not exist (default: <run_dir>/export/<format>)")
    parser.add_argument("--shard-size", type=int, default=1000, help="webdataset: samples per shard")
    parser.set_defaults(handler=run_export)
