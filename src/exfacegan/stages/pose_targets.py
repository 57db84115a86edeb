"""The yaw each generated image was steered to (`sampling.pose`), recomputed from the manifest's draw keys: the
seeded target of a StyleGAN draw, or the yaw GAN-Control's orientation controller was given.

Written beside the manifest as `pose_targets.npz` (`class`, `target_yaw` per manifest row, NaN for a reference
image) and summarised in `stats.json`: the targeted yaw's spread per class, to read against the measured yaw
spread of the report's pose section (which a pose estimate from five landmarks and the linear model both blur).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exfacegan.data.artifacts import load_json, save_json, save_npz
from exfacegan.data.manifest import read_manifest
from exfacegan.metrics.pose_report import yaw_spread_per_class
from exfacegan.stages.offsets import SIDES, Draw, OffsetSpec, attribute_seeds, target_yaws

POSE_TARGETS_FILE = "pose_targets.npz"


def record_pose_targets(out_dir: Path, spec: OffsetSpec, controlled: bool = False) -> Path:
    """Write `out_dir/pose_targets.npz` for `out_dir/manifest.csv` and add the targets' summary to stats.json
    (`controlled`: GAN-Control, whose controller gets every image's yaw, the reference's included)."""
    rows = read_manifest(out_dir / "manifest.csv")
    draws = [Draw(int(row["class"]), int(row["reference"]), SIDES.index(row["side"]), int(row["k"]),
                  int(row["attempt"])) for row in rows]
    targets = controller_yaws(draws, spec) if controlled else target_yaws(draws, spec)
    classes = np.array([d.cls for d in draws], np.int64)
    path = save_npz(out_dir / POSE_TARGETS_FILE, **{"class": classes, "target_yaw": targets})
    steered = np.isfinite(targets)
    spread = yaw_spread_per_class(targets[steered], classes[steered])
    stats = load_json(out_dir / "stats.json")
    stats["pose_target_yaw_range"] = list(spec.pose.yaw_range)
    if spread:
        stats["pose_target_yaw_spread_class_median"] = float(np.median(list(spread.values())))
        stats["pose_target_yaw_spread_per_class"] = spread
    save_json(out_dir / "stats.json", stats)
    return path


def controller_yaws(draws: list[Draw], spec: OffsetSpec) -> np.ndarray:
    """float64 [M]: the yaw GAN-Control's orientation controller gets for each draw under `spec.pose`."""
    import torch

    from exfacegan.gans.gan_control_controllers import AttributeRanges, random_attributes

    low, high = spec.pose.yaw_range
    ranges = AttributeRanges(yaw=(int(low), int(high)))
    seeds = torch.from_numpy(attribute_seeds(draws, spec))
    return random_attributes(seeds, ranges)["orientation"][:, 0].double().numpy()
