"""Head-pose statistics of a generated dataset (the yaw, pitch and roll columns of generate's manifest.csv) and
their figures: the dataset's pose histograms and each identity's yaw spread (standard deviation over its images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from exfacegan.align.pose import POSE_COLUMNS
from exfacegan.data.manifest import read_manifest
from exfacegan.metrics.plots import GENUINE_COLOUR, Figure, _save


def read_poses(manifest_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(poses float64 [M, 3] in degrees, class int64 [M]) of the manifest's images; empty without pose columns."""
    rows = [row for row in read_manifest(manifest_path) if row["path"]]
    if not rows or any(column not in rows[0] for column in POSE_COLUMNS):
        return np.zeros((0, 3)), np.zeros(0, np.int64)
    poses = np.array([[float(row[c] or "nan") for c in POSE_COLUMNS] for row in rows])
    return poses, np.array([int(row["class"]) for row in rows], np.int64)


def pose_metrics(manifest_path: Path) -> dict[str, Any]:
    """Pose summary of the dataset: how many faces have a pose, mean and spread of each angle, and the per-class
    yaw spread (std over a class's images; classes with two posed images or more). {} when no face has a pose."""
    poses, classes = read_poses(manifest_path)
    posed = np.isfinite(poses).all(1)
    if not posed.any():
        return {"pose_faces": 0, **target_metrics(manifest_path)} if len(poses) else {}
    poses, classes = poses[posed], classes[posed]
    metrics: dict[str, Any] = {"pose_faces": int(posed.sum())}
    for name, values in zip(POSE_COLUMNS, poses.T):
        metrics.update({f"{name}_mean": float(values.mean()), f"{name}_std": float(values.std())})
    spread = yaw_spread_per_class(poses[:, 0], classes)
    if spread:
        values = np.array(list(spread.values()))
        metrics.update({"yaw_spread_class_min": float(values.min()), "yaw_spread_class_median": float(np.median(values)),
                        "yaw_spread_class_max": float(values.max()), "yaw_spread_per_class": spread})
    return {**metrics, **target_metrics(manifest_path)}


def target_metrics(manifest_path: Path) -> dict[str, Any]:
    """With pose variation (`pose_targets.npz` beside the manifest): the targeted yaw's spread per class, to set
    against the measured one; {} without it."""
    path = Path(manifest_path).parent / "pose_targets.npz"
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as saved:
        targets, classes = saved["target_yaw"].astype(np.float64), saved["class"].astype(np.int64)
    steered = np.isfinite(targets)
    spread = yaw_spread_per_class(targets[steered], classes[steered])
    if not spread:
        return {}
    return {"target_yaw_spread_class_median": float(np.median(list(spread.values()))),
            "target_yaw_spread_per_class": spread}


def yaw_spread_per_class(yaw: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """Standard deviation of yaw per class ('%05d' names), for classes with at least two values."""
    labels, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
    sums, squares = np.bincount(inverse, yaw), np.bincount(inverse, yaw**2)
    variance = np.maximum(squares / counts - (sums / counts) ** 2, 0.0)
    return {f"{label:05d}": float(np.sqrt(v)) for label, v, count in zip(labels, variance, counts) if count >= 2}


def pose_histograms(path: Path, manifest_path: Path) -> Figure:
    """Histograms of yaw, pitch and roll over the dataset's posed faces."""
    poses, _ = read_poses(manifest_path)
    poses = poses[np.isfinite(poses).all(1)]
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.2), sharey=True)
    for axis, name, values in zip(axes, POSE_COLUMNS, poses.T):
        axis.hist(values, bins=36, color=GENUINE_COLOUR, alpha=0.8)
        axis.set_xlabel(f"{name} (degrees)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("faces")
    return _save(figure, path, "pose_histogram", "Head pose of the dataset's faces")
