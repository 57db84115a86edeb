"""`exfacegan audit <run_dir | image_folder> --against <real>`: which synthetic identities look like real people.

    exfacegan audit <run_dir | image_folder> --against <image folder | RecordIO folder | .bin | .npz>
                    [--embedder NAME [--checkpoint FILE]] [--fmr 1e-4] [--impostors synthetic|real]
                    [--top 12] [--out DIR] [--cache-dir DIR] [--device D] [--batch-size N] [--num-workers N]

For a run directory its judge (`analyze.judge`, else `embedder`) is reused unless --embedder is given, the
synthetic impostor scores of its analyze stage set the threshold (when judged by the same model), and the
audit lands in `<run_dir>/audit/` (read by the dataset card, and logged to W&B when the run logged there).
An `.npz` gallery holds `embeddings` [N, D] and `labels` [N] made by the same FR model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from exfacegan.cli.networks import EMBEDDERS, build_embedder, run_embedder
from exfacegan.errors import DataError


def audit_command(args: argparse.Namespace) -> int:
    from exfacegan.data.gallery import load_gallery
    from exfacegan.stages.audit import AuditSpec, audit
    from exfacegan.weights import cache_dir

    spec = AuditSpec(fmr=args.fmr, impostors=args.impostors, max_impostor_pairs=args.max_impostor_pairs, top=args.top)
    path = Path(args.path)
    if not path.is_dir():
        raise DataError(f"{path} {'is not a folder' if path.exists() else 'does not exist'}; give a run directory "
                        "or an image folder <root>/<identity>/<images>")
    if not Path(args.against).exists():
        raise DataError(f"--against {args.against} does not exist")
    is_run = (path / "generate" / "dataset").is_dir()
    embedder = run_embedder(path, args.device) if args.embedder is None and is_run else None
    run_impostors = _run_impostors(path) if embedder is not None else None
    if embedder is None:
        embedder = build_embedder(args.embedder or "dlib", args.checkpoint, args.device)
    out = Path(args.out) if args.out else (path / "audit" if is_run else Path.cwd() / f"{path.resolve().name}_audit")
    gallery = load_gallery(args.against, embedder, cache_dir=Path(args.cache_dir) if args.cache_dir else cache_dir() / "audit",
                           batch_size=args.batch_size, device=args.device, num_workers=args.num_workers)
    result = audit(path / "generate" / "dataset" if is_run else path, gallery, embedder, out, spec=spec,
                   run_impostors=run_impostors, batch_size=args.batch_size, device=args.device,
                   num_workers=args.num_workers)
    if is_run:
        _log_to_wandb(path, out, result)
    print(f"{result['flagged']} of {result['classes']} classes above {result['threshold']:.4f} (FMR {result['fmr']:g}, "
          f"{result['impostor_pairs']} impostor scores); nearest real: highest {result['nearest_real_max']:.4f}")
    print(f"audit: {out / 'audit.html'}")
    return 0


def _run_impostors(run_dir: Path) -> np.ndarray | None:
    scores = run_dir / "analyze" / "scores.npz"
    return np.load(scores)["impostor"] if scores.is_file() else None


def _log_to_wandb(run_dir: Path, out: Path, result: dict) -> None:
    """The audit's numbers and histogram in a W&B run of its own, grouped with the run, when the run used W&B."""
    from omegaconf import OmegaConf

    from exfacegan.loggers import NullLogger, build_logger
    from exfacegan.rebuild import load_run_config

    saved = load_run_config(run_dir)
    node = OmegaConf.select(saved[1], "logger") if saved else None
    logger = build_logger(node, name="audit", group=run_dir.resolve().name, dir=str(run_dir), config=None)
    if type(logger) is NullLogger:
        return
    try:
        logger.log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float))}, "audit")
        logger.log_image("audit/nearest_real_histogram", out / "nearest_real_histogram.png")
    finally:
        logger.finish()


def add_audit_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("audit", help="leakage audit: synthetic identities against real ones")
    parser.add_argument("path", help="an exfacegan run directory, or an image folder <root>/<identity>/<images>")
    parser.add_argument("--against", required=True,
                        help="real identities: an image folder (per identity, or flat), a RecordIO folder, an "
                             "insightface .bin, or an .npz with `embeddings` [N, D] and `labels` [N]")
    parser.add_argument("--embedder", choices=EMBEDDERS, default=None,
                        help="the judging FR model (default: the run's, else dlib)")
    parser.add_argument("--checkpoint", default=None, help="iresnet .pth (--embedder iresnet*) or .onnx (--embedder onnx)")
    parser.add_argument("--fmr", type=float, default=1e-4, help="false-match rate of the threshold (default 1e-4)")
    parser.add_argument("--impostors", choices=("synthetic", "real"), default="synthetic",
                        help="impostor scores setting the threshold: the synthetic dataset's or the gallery's")
    parser.add_argument("--max-impostor-pairs", type=int, default=1_000_000)
    parser.add_argument("--top", type=int, default=12, help="closest pairs shown as images")
    parser.add_argument("--out", default=None, help="output folder (default: <run_dir>/audit or ./<name>_audit)")
    parser.add_argument("--cache-dir", default=None, help="gallery embedding cache (default: $EXFACEGAN_CACHE/audit)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0, help="image decoding processes")
    parser.set_defaults(handler=audit_command)
