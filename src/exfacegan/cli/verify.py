"""`exfacegan verify PATH [--regenerate K] [--seed S]`: re-hash a dataset against its tables, and re-render K of its
classes from the run's config, boundaries and weights (exfacegan.stages.verify).

Exit status 0 when everything matches, 1 on any difference (one line per file or class), 2 (one line) when
PATH is not a run or dataset, a table is hostile, or a weights file is not the one provenance.json recorded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from exfacegan.errors import ConfigError


def run_verify(args: argparse.Namespace) -> int:
    from exfacegan.stages.verify import check_files, locate, plan_regeneration, regenerate, summary

    if args.regenerate < 0:
        raise ConfigError(f"--regenerate must be >= 0, got {args.regenerate}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    listing = locate(Path(args.path))
    plan = plan_regeneration(listing, args.regenerate, args.seed) if args.regenerate else None
    outcome = check_files(listing)
    for line in outcome.lines:
        print(line)
    print(summary(listing, outcome))
    clean = outcome.clean
    if plan is not None:
        result = regenerate(plan, listing, args.device)
        for line in result.lines:
            print(line)
        names = ", ".join(f"{cls:05d}" for cls in result.classes)
        verdict = "all match" if not result.lines else f"{len(result.lines)} differences"
        print(f"regenerated classes {names} (seed {args.seed}) from config.yaml, fit/boundaries.npz and the "
              f"weights; compared {result.comparison}: {verdict}")
        clean = clean and not result.lines
    return 0 if clean else 1


def add_verify_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify", help="check a run's or an export's images against their SHA-256, and "
                                                  "re-render some classes from the run's config")
    parser.add_argument("path", help="a run directory, its generate/ folder, or an exported dataset (DATASET.md)")
    parser.add_argument("--regenerate", type=int, default=0, metavar="K",
                        help="re-render K classes chosen with --seed and compare them with the files (run folders)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the classes of --regenerate")
    parser.add_argument("--device", default="auto", help="where --regenerate renders (default auto)")
    parser.set_defaults(handler=run_verify)
