"""Stage 5: how well the identities of a dataset separate, judged by a face embedder.

Embeds every image of an image-folder dataset, scores genuine and impostor pairs, and writes
`metrics.json`, the raw scores (`scores.npz`), the histogram PNGs and a self-contained `report.html`
into `out_dir`. For an
ExFaceGAN run it also reports the boundary validation accuracies and the faces the aligner dropped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from exfacegan.data.artifacts import save_json, save_npz
from exfacegan.data.image_folder import ImageFolderDataset, load_image
from exfacegan.data.manifest import read_manifest
from exfacegan.errors import DataError
from exfacegan.metrics.plots import Figure, identity_grid, score_histogram, value_histogram
from exfacegan.metrics.pose_report import pose_histograms, pose_metrics
from exfacegan.metrics.report import write_report
from exfacegan.metrics.verification import PairScores, pair_scores, per_class_means, verification_metrics

log = logging.getLogger(__name__)

IMAGE_SIZE = 112


def embed_dataset(
    dataset: ImageFolderDataset, embedder: nn.Module, *, batch_size: int = 64, device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> np.ndarray:
    """L2-normalised float32 embeddings [N, D] of every image, in dataset order."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks = []
    with torch.inference_mode():
        for images, _ in tqdm(loader, desc="analyze: embedding", unit="batch"):
            chunks.append(embedder(images.to(device)).float().cpu())
    embeddings = torch.cat(chunks).numpy()
    if embeddings.ndim != 2 or len(embeddings) != len(dataset) or not np.isfinite(embeddings).all():
        raise DataError(f"the embedder returned {embeddings.shape} non-finite or misshaped embeddings for {len(dataset)} images")
    return embeddings


def _both_sides(manifest_path: Path | None, class_names: list[str]) -> bool:
    """True when the manifest says classes 2r/2r+1 are the two sides of one boundary (and names are integers)."""
    if manifest_path is None or not all(name.isdigit() for name in class_names):
        return False
    if len({int(name) for name in class_names}) != len(class_names):
        return False
    return any(row["side"] == "other" for row in read_manifest(manifest_path, required=["side"]))


def _boundary_metrics(path: Path) -> dict[str, Any]:
    boundaries = np.load(path)
    valid = boundaries["valid"].astype(bool)
    val_accuracy = boundaries["val_accuracy"][valid].astype(np.float64)
    metrics: dict[str, Any] = {"boundaries": int(len(valid)), "boundaries_valid": int(valid.sum())}
    if valid.any():
        metrics.update({
            "val_accuracy_mean": float(val_accuracy.mean()), "val_accuracy_median": float(np.median(val_accuracy)),
            "val_accuracy_min": float(val_accuracy.min()), "val_accuracy_max": float(val_accuracy.max()),
            "train_accuracy_mean": float(boundaries["train_accuracy"][valid].mean()),
        })
    return metrics


# The identity filter's counts and acceptance (exfacegan.stages.identity_filter), shown when stats.json has them.
FILTER_STATS = ("rejected_reference_similarity", "rejected_cross_similarity", "accepted_fraction",
                "accepted_fraction_class_min", "accepted_fraction_class_median", "accepted_fraction_per_class")


def _face_metrics(path: Path) -> dict[str, Any]:
    stats = json.loads(Path(path).read_text())
    attempted, dropped = int(stats["attempted"]), int(stats["dropped"])
    return {"faces_attempted": attempted, "faces_dropped": dropped,
            "dropped_fraction": dropped / attempted if attempted else 0.0,
            "faces_redrawn": int(stats.get("redrawn", 0)), "classes_short": int(stats.get("classes_short", 0)),
            **{key: stats[key] for key in FILTER_STATS if key in stats}}


def _grid_identities(dataset: ImageFolderDataset, identities: int, images: int) -> list[tuple[str, torch.Tensor]]:
    if images < 1:
        return []
    rows = []
    for label in range(min(identities, len(dataset.classes))):
        paths = [dataset.paths[i] for i in dataset.class_indices(label)[:images]]
        rows.append((dataset.classes[label], torch.stack([load_image(p, dataset.size) for p in paths])))
    return rows


def analyze(
    dataset_dir: Path,
    out_dir: Path,
    embedder: nn.Module,
    *,
    boundaries_path: Path | None = None,
    manifest_path: Path | None = None,
    generate_stats_path: Path | None = None,
    label_stats_path: Path | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    max_impostor_pairs: int = 1_000_000,
    seed: int = 0,
    grid_identities: int = 8,
    grid_images: int = 8,
    num_workers: int = 0,
    dataset_name: str | None = None,
) -> dict[str, Any]:
    """Embed `dataset_dir`, score it, and write metrics.json, scores.npz, figures and report.html to `out_dir`.

    `dataset_name`: how metrics.json names the dataset (a run's: its path relative to the run folder, so that a
    run reusing this result from the stage cache names its own; default: the absolute path).
    Returns the metrics; the figures are the PNG files in `out_dir`, each named after its `Figure.name`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = ImageFolderDataset(dataset_dir, size=IMAGE_SIZE)
    embeddings = embed_dataset(dataset, embedder, batch_size=batch_size, device=device, num_workers=num_workers)
    scores, class_names = _score(dataset, embeddings, manifest_path, max_impostor_pairs=max_impostor_pairs, seed=seed)
    metrics: dict[str, Any] = {
        "dataset": dataset_name or str(Path(dataset_dir).resolve()), "embedder": type(embedder).__name__,
        "images": len(dataset), "identities": len(dataset.classes),
        **_separation_metrics(scores, class_names),
    }
    if boundaries_path is not None:
        metrics.update(_boundary_metrics(boundaries_path))
    if generate_stats_path is not None:
        metrics.update(_face_metrics(generate_stats_path))
    if manifest_path is not None:
        metrics.update(pose_metrics(manifest_path))
    if label_stats_path is not None:  # references left out for a nearest real identity above the bound
        metrics.update(json.loads(Path(label_stats_path).read_text()))
    figures = _figures(out_dir, scores, metrics, boundaries_path, _grid_identities(dataset, grid_identities, grid_images))
    if metrics.get("pose_faces"):
        figures.update(_pose_figures(out_dir, manifest_path, metrics))
    save_npz(out_dir / "scores.npz", genuine=scores.genuine, genuine_class=scores.genuine_class,
             impostor=scores.impostor, both_sides=scores.both_sides)
    save_json(out_dir / "metrics.json", metrics)
    report = write_report(out_dir, metrics, figures, dataset_dir=dataset_dir)
    log.info("analyze: EER %.4f, FMR100 %.4f, FDR %.3f (%s)", metrics["eer"], metrics["fmr100"], metrics["fdr"],
             report.name)
    return metrics


def _score(dataset: ImageFolderDataset, embeddings: np.ndarray, manifest_path: Path | None, *,
           max_impostor_pairs: int, seed: int) -> tuple[PairScores, dict[int, str]]:
    """Pair scores, and the folder name of each class label they use: the folder's number for the two-sided
    classes of an ExFaceGAN manifest (so that classes 2r and 2r+1 pair up), else its index."""
    both_sides = _both_sides(manifest_path, dataset.classes)
    if both_sides:
        numbers = np.array([int(name) for name in dataset.classes])
        labels, class_names = numbers[dataset.labels], dict(zip(numbers.tolist(), dataset.classes))
    else:
        labels, class_names = dataset.labels, dict(enumerate(dataset.classes))
    scores = pair_scores(embeddings, labels, max_impostor_pairs=max_impostor_pairs, seed=seed, both_sides=both_sides)
    return scores, class_names


def _separation_metrics(scores: PairScores, class_names: dict[int, str]) -> dict[str, Any]:
    metrics: dict[str, Any] = verification_metrics(scores.genuine, scores.impostor)
    metrics["impostor_sampled"] = scores.impostor_sampled
    if len(scores.both_sides):
        metrics.update({"both_sides_pairs": int(len(scores.both_sides)),
                        "both_sides_mean": float(scores.both_sides.mean()),
                        "both_sides_std": float(scores.both_sides.std())})
    class_means = {class_names[label]: mean for label, mean in per_class_means(scores.genuine, scores.genuine_class).items()}
    means = np.array(list(class_means.values()))
    metrics.update({
        "per_class_genuine_classes": len(class_means), "per_class_genuine_min": float(means.min()),
        "per_class_genuine_median": float(np.median(means)), "per_class_genuine_max": float(means.max()),
        "per_class_genuine_mean": class_means,
    })
    return metrics


def _figures(out_dir: Path, scores: PairScores, metrics: dict[str, Any], boundaries_path: Path | None,
             grid: list[tuple[str, torch.Tensor]]) -> dict[str, Figure]:
    means = np.array(list(metrics["per_class_genuine_mean"].values()))
    figures = [
        score_histogram(out_dir / "score_histogram.png", scores.genuine, scores.impostor, scores.both_sides,
                        threshold=metrics["eer_threshold"]),
        value_histogram(out_dir / "per_class_genuine_histogram.png", means, name="per_class_genuine_histogram",
                        title="Per-identity mean genuine similarity", xlabel="mean genuine cosine similarity"),
    ]
    if boundaries_path is not None:
        boundaries = np.load(boundaries_path)
        figures.append(value_histogram(
            out_dir / "val_accuracy_histogram.png", boundaries["val_accuracy"][boundaries["valid"].astype(bool)],
            name="val_accuracy_histogram", title="Boundary validation accuracy", xlabel="validation accuracy",
        ))
    if {"rejected_reference_similarity", "rejected_cross_similarity"} & metrics.keys():
        figures.append(value_histogram(
            out_dir / "accepted_fraction_histogram.png", np.array(list(metrics["accepted_fraction_per_class"].values())),
            name="accepted_fraction_histogram", title="Identity filter: faces kept per identity",
            xlabel="fraction of the rendered faces kept", bins=20,
        ))
    if grid:
        figures.append(identity_grid(out_dir / "identity_grid.png", grid))
    return {figure.name: figure for figure in figures}


def _pose_figures(out_dir: Path, manifest_path: Path, metrics: dict[str, Any]) -> dict[str, Figure]:
    figures = [pose_histograms(out_dir / "pose_histogram.png", manifest_path)]
    if "yaw_spread_per_class" in metrics:
        figures.append(value_histogram(
            out_dir / "yaw_spread_histogram.png", np.array(list(metrics["yaw_spread_per_class"].values())),
            name="yaw_spread_histogram", title="Yaw spread per identity", xlabel="std of yaw over an identity (degrees)",
        ))
    return {figure.name: figure for figure in figures}


def find_run_inputs(run_dir: Path) -> dict[str, Path | None]:
    """The dataset folder, manifest, generate stats and boundaries of an ExFaceGAN run directory."""
    run_dir = Path(run_dir)
    generate_dir = run_dir / "generate"
    dataset_dir = generate_dir / "dataset"
    if not dataset_dir.is_dir():
        raise DataError(f"{run_dir} has no generated dataset ({dataset_dir}); run the generate stage first")

    def existing(path: Path) -> Path | None:
        return path if path.is_file() else None

    return {
        "dataset_dir": dataset_dir,
        "manifest_path": existing(generate_dir / "manifest.csv"),
        "generate_stats_path": existing(generate_dir / "stats.json"),
        "boundaries_path": existing(run_dir / "fit" / "boundaries.npz"),
        "label_stats_path": existing(run_dir / "label" / "stats.json"),
    }


def analyze_run(run_dir: Path, out_dir: Path | None, embedder: nn.Module, **options: Any) -> dict[str, Any]:
    """`analyze` on the dataset of an ExFaceGAN run; out_dir defaults to `run_dir/analyze`. metrics.json names
    the dataset by its path relative to the run folder."""
    run_dir = Path(run_dir)
    inputs = find_run_inputs(run_dir)
    dataset_dir = inputs.pop("dataset_dir")
    return analyze(dataset_dir, run_dir / "analyze" if out_dir is None else out_dir, embedder, **inputs,
                   dataset_name=dataset_dir.relative_to(run_dir).as_posix(), **options)
