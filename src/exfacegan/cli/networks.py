"""FR models the commands build by name, or from a run's own saved config."""

from __future__ import annotations

from pathlib import Path

from exfacegan.errors import ConfigError
from exfacegan.weights import REGISTRY

IRESNET_ARCHS = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200")
ONNX_NAMES = tuple(name for name, entry in REGISTRY.items() if entry.arch == "onnx")
EMBEDDERS = ("dlib", *IRESNET_ARCHS, "onnx", *ONNX_NAMES)


def build_embedder(name: str, checkpoint: str | None, device: str):
    """An embedder by name: dlib's descriptor, an ONNX model of the weights registry, or an iresnet (a `.pth`)
    or any ONNX face model (`onnx`) from `checkpoint`."""
    from exfacegan import embedders

    if name == "dlib":
        return embedders.DlibEmbedder()
    if name in ONNX_NAMES:
        return embedders.load_onnx_embedder(name, device)
    if checkpoint is None:
        raise ConfigError(f"--embedder {name} needs --checkpoint /path/to/{'model.onnx' if name == 'onnx' else 'backbone.pth'}")
    if name == "onnx":
        return embedders.load_onnx_embedder(checkpoint, device)
    return embedders.load_iresnet_embedder(name, checkpoint, device)


def run_embedder(run_dir: Path, device: str):
    """The embedder a run judged its dataset with, built from its saved config; None if there is none."""
    from omegaconf import OmegaConf

    from exfacegan.rebuild import load_run_config, rebuild_network

    saved = load_run_config(run_dir)
    if saved is None:
        return None
    path, cfg = saved
    node = OmegaConf.select(cfg, "analyze.judge") or OmegaConf.select(cfg, "embedder")
    if node is None or "network" not in node:
        return None
    return rebuild_network(node.network, path, device, "; pass --embedder")
