"""The leakage audit: does any synthetic identity look like a real person of a given gallery?

For every synthetic class, the nearest real identity twice over: by its images (the highest cosine of any of
its images to any real image) and by its mean (the L2-normalised mean embedding against every real image).
A class is flagged when either score is above a threshold set on the judge's own impostor distribution at a
chosen false-match rate: the (1 - FMR) quantile of impostor scores (`method="higher"`, so with fewer than
1 / FMR scores it is the highest one; `threshold_resolved` says whether there were enough). The impostor
scores are the synthetic dataset's ("synthetic": the run's analyze/scores.npz when the judge is the run's,
else sampled different-class pairs of the dataset) or the gallery's ("real": sampled pairs of different real
identities).

A class score is a maximum over images x real images comparisons, each of which an impostor passes with
probability about FMR: `chance_flags_bound` = FMR x the comparisons of all classes bounds the flags expected
by chance alone (a union bound), and is reported so the threshold can be read against it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exfacegan.data.artifacts import save_json
from exfacegan.data.gallery import Gallery
from exfacegan.data.image_folder import ImageFolderDataset
from exfacegan.errors import ConfigError, DataError
from exfacegan.metrics.nearest import Nearest, best_per_class, nearest
from exfacegan.metrics.verification import sample_impostor_pairs

log = logging.getLogger(__name__)

IMPOSTOR_SOURCES = ("synthetic", "real")
FACE_SIZE = 112


@dataclass(frozen=True)
class AuditSpec:
    """The audit's settings, checked when built."""

    fmr: float = 1e-4
    impostors: str = "synthetic"
    max_impostor_pairs: int = 1_000_000
    top: int = 12
    seed: int = 0
    query_chunk: int = 4096
    gallery_chunk: int = 16384

    def __post_init__(self) -> None:
        if not 0 < self.fmr < 1:
            raise ConfigError(f"--fmr must be in (0, 1), got {self.fmr}")
        if self.impostors not in IMPOSTOR_SOURCES:
            raise ConfigError(f"--impostors must be one of {IMPOSTOR_SOURCES}, got {self.impostors!r}")
        for name in ("max_impostor_pairs", "query_chunk", "gallery_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.top < 0:
            raise ConfigError(f"--top must be >= 0, got {self.top}")


def class_means(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """L2-normalised mean embedding [C, D] of each class."""
    sums = np.zeros((num_classes, embeddings.shape[1]), np.float64)
    np.add.at(sums, labels, embeddings)
    return (sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def sampled_impostors(embeddings: np.ndarray, labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Cosines of up to `count` distinct different-label pairs drawn uniformly (seeded)."""
    first, second = sample_impostor_pairs(labels, count, np.random.default_rng(seed))
    scores = [np.einsum("ij,ij->i", embeddings[first[s : s + 65536]], embeddings[second[s : s + 65536]])
              for s in range(0, len(first), 65536)]
    return np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)


def impostor_threshold(impostors: np.ndarray, fmr: float) -> float:
    """The (1 - fmr) quantile of the impostor scores (the next higher score; the highest when there are few)."""
    if len(impostors) == 0:
        raise DataError("no impostor scores to set the threshold on: the audited side needs two identities or more")
    return float(np.quantile(impostors.astype(np.float64), 1 - fmr, method="higher"))


def audit(
    dataset_dir: Path,
    gallery: Gallery,
    embedder: nn.Module,
    out_dir: Path,
    *,
    spec: AuditSpec = AuditSpec(),
    run_impostors: np.ndarray | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> dict[str, Any]:
    """Audit the image-folder dataset `dataset_dir` against `gallery`; writes audit.json, the figure and audit.html
    into `out_dir` and returns the audit. `run_impostors`: the run's synthetic impostor scores by this embedder."""
    from exfacegan.metrics.audit_report import write_audit_report
    from exfacegan.stages.analyze import embed_dataset

    dataset = ImageFolderDataset(dataset_dir, size=FACE_SIZE)
    embeddings = embed_dataset(dataset, embedder, batch_size=batch_size, device=device, num_workers=num_workers)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    if embeddings.shape[1] != gallery.embeddings.shape[1]:
        raise DataError(f"the gallery's embeddings are {gallery.embeddings.shape[1]}-d, the judge's "
                        f"{embeddings.shape[1]}-d: embed the gallery with the same FR model")
    num_classes = len(dataset.classes)
    search = {"query_chunk": spec.query_chunk, "gallery_chunk": spec.gallery_chunk, "device": device}
    by_image = best_per_class(nearest(embeddings, gallery.embeddings, **search), dataset.labels, num_classes)
    by_mean = nearest(class_means(embeddings, dataset.labels, num_classes), gallery.embeddings, **search)
    impostors, impostor_source = _impostors(spec, embeddings, dataset.labels, gallery, run_impostors)
    threshold = impostor_threshold(impostors, spec.fmr)
    classes = _class_rows(dataset, gallery, by_image, by_mean, threshold)
    real_images = np.bincount(gallery.labels, minlength=len(gallery.identities))
    comparisons = int(len(embeddings)) * len(gallery.labels)
    result: dict[str, Any] = {
        "dataset": str(Path(dataset_dir).resolve()), "gallery": str(gallery.source.resolve()),
        "gallery_format": gallery.kind, "embedder": type(embedder).__name__,
        "classes": num_classes, "images": len(dataset), "real_identities": int((real_images > 0).sum()),
        "real_images": len(gallery.labels), "fmr": spec.fmr, "threshold": threshold,
        "impostor_source": impostor_source, "impostor_pairs": len(impostors),
        "threshold_resolved": bool(len(impostors) * spec.fmr >= 1),
        "flagged": sum(row["flagged"] for row in classes),
        "flagged_fraction": sum(row["flagged"] for row in classes) / num_classes,
        "nearest_real_max": float(by_image.score.max()), "nearest_real_median": float(np.median(by_image.score)),
        "nearest_real_mean_max": float(by_mean.score.max()),
        "comparisons": comparisons, "chance_flags_bound": spec.fmr * comparisons,
        "per_class": sorted(classes, key=lambda row: -row["similarity"]),
    }
    out_dir = Path(out_dir)
    write_audit_report(out_dir, result, by_image.score, impostors, dataset, gallery, spec.top)
    save_json(out_dir / "audit.json", result)
    log.info("audit: %d of %d classes above %.4f (FMR %g) against %s", result["flagged"], num_classes, threshold,
             spec.fmr, gallery.source)
    return result


def _impostors(spec: AuditSpec, embeddings: np.ndarray, labels: np.ndarray, gallery: Gallery,
               run_impostors: np.ndarray | None) -> tuple[np.ndarray, str]:
    if spec.impostors == "real":
        scores = sampled_impostors(gallery.embeddings, gallery.labels, spec.max_impostor_pairs, spec.seed)
        return scores, f"real: {len(scores)} sampled pairs of different gallery identities"
    if run_impostors is not None and len(run_impostors):
        return np.asarray(run_impostors, np.float32), "synthetic: the run's analyze/scores.npz impostors"
    scores = sampled_impostors(embeddings, labels, spec.max_impostor_pairs, spec.seed)
    return scores, f"synthetic: {len(scores)} sampled pairs of different synthetic classes"


def _class_rows(dataset: ImageFolderDataset, gallery: Gallery, by_image: Nearest, by_mean: Nearest,
                threshold: float) -> list[dict[str, Any]]:
    names = np.asarray(gallery.identities)
    image_identity = names[gallery.labels[by_image.index]]
    mean_identity = names[gallery.labels[by_mean.index]]
    root = Path(dataset.root)
    return [
        {"class": dataset.classes[c], "similarity": float(by_image.score[c]), "real_identity": str(image_identity[c]),
         "real_index": int(by_image.index[c]), "image": str(dataset.paths[by_image.query[c]].relative_to(root)),
         "mean_similarity": float(by_mean.score[c]), "mean_real_identity": str(mean_identity[c]),
         "flagged": bool(by_image.score[c] > threshold or by_mean.score[c] > threshold)}
        for c in range(len(dataset.classes))
    ]
