"""The `exfacegan` console script: one subcommand a module of this package, each adding its own parser."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from exfacegan.cli.audit import add_audit_parser
from exfacegan.cli.compare import add_compare_parser
from exfacegan.cli.export import add_export_parser
from exfacegan.cli.offsets import add_offsets_parser
from exfacegan.cli.report import add_report_parser
from exfacegan.cli.verify import add_verify_parser
from exfacegan.errors import ConfigError

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_report_parser, add_export_parser,
                                                                   add_offsets_parser, add_compare_parser,
                                                                   add_verify_parser, add_audit_parser]


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible arguments in one line, before any network is built; `--device auto` becomes a device."""
    from exfacegan.devices import resolve_device

    for name in ("batch_size", "max_impostor_pairs"):  # None: the subcommand's default
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if getattr(args, "num_workers", 0) < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {args.num_workers}")
    if getattr(args, "out", None) and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is an existing file, not a folder")
    if hasattr(args, "device"):
        try:
            args.device = str(resolve_device(args.device))
        except ConfigError as error:
            raise ConfigError(f"--device {args.device}: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exfacegan", description="ExFaceGAN synthetic face datasets")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from exfacegan.cli.entry import report_errors

    args = build_parser().parse_args(argv)
    return report_errors(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    check_args(args)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
