"""Training data: a held-out split per identity, verification pairs on it, and the (distributed) loader.

Batch size is GLOBAL: each of `world_size` processes loads `batch_size // world_size` images per step.
The sampler drops the tail that does not divide evenly among processes and the loader drops the last
incomplete batch, so every process runs floor(N / batch_size) steps per epoch, as a single process does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from exfacegan.data.image_folder import ImageFolderDataset
from exfacegan.data.recordio import RecordIODataset
from exfacegan.data.shards import ShardDataset, ShardStream, StreamLoader
from exfacegan.errors import ConfigError, DataError
from exfacegan.metrics.verification import sample_impostor_pairs

MIN_HELD_OUT_PER_CLASS = 2  # one genuine pair per identity at least


def _members_by_class(labels: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    _, starts = np.unique(labels[order], return_index=True)
    return np.split(order, starts[1:])


def split_holdout(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices (train, held out): from every identity with 3+ images, round(fraction * n) images,
    at least 2 and leaving at least 1 for training, are held out at random (seeded)."""
    labels = np.asarray(labels)
    if not 0 <= fraction < 1:
        raise ConfigError(f"eval.holdout_fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    if fraction > 0:
        for members in _members_by_class(labels):
            if len(members) < MIN_HELD_OUT_PER_CLASS + 1:
                continue
            count = min(max(round(fraction * len(members)), MIN_HELD_OUT_PER_CLASS), len(members) - 1)
            held.append(rng.choice(members, count, replace=False))
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


def verification_pairs(labels: np.ndarray, max_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs [P, 2] of positions in `labels` and same-identity flags [P], shuffled: up to max_pairs // 2
    genuine pairs (sampled from all same-identity pairs) and as many impostor pairs (random, distinct)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    genuine = []
    for members in _members_by_class(labels):
        first, second = np.triu_indices(len(members), k=1)
        genuine.append(np.stack([members[first], members[second]], 1))
    genuine = np.concatenate(genuine) if genuine else np.zeros((0, 2), np.int64)
    genuine = genuine[rng.permutation(len(genuine))[: max_pairs // 2]]
    impostor = np.stack(sample_impostor_pairs(labels, len(genuine), rng), 1)
    pairs = np.concatenate([genuine, impostor])
    issame = np.concatenate([np.ones(len(genuine), bool), np.zeros(len(impostor), bool)])
    order = rng.permutation(len(pairs))
    return pairs[order], issame[order]


def open_dataset(root: str | Path, size: int = 112) -> ImageFolderDataset | RecordIODataset | ShardDataset:
    """The training set at `root`, by its contents: train.rec + train.idx -> MXNet RecordIO, *.tar -> WebDataset
    shards, else an image folder <root>/<identity>/<images>."""
    root = Path(root)
    if (root / "train.rec").is_file() and (root / "train.idx").is_file():
        return RecordIODataset(root, size)
    if root.is_dir() and any(root.glob("*.tar")):
        return ShardDataset(root, size)
    return ImageFolderDataset(root, size)


def train_loader(dataset: Dataset, indices: np.ndarray, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 num_workers: int = 4, seed: int = 0, pin_memory: bool = False) -> DataLoader | StreamLoader:
    """Shuffled per epoch (call `loader.sampler.set_epoch`), `batch_size` global, uint8 images as stored.
    WebDataset shards are streamed (ShardStream), the images at `indices` only, for floor(N / batch_size) steps."""
    if batch_size % world_size:
        raise ConfigError(f"batch_size={batch_size} is global and must divide among {world_size} processes")
    if len(indices) < batch_size:
        raise DataError(f"{len(indices)} training images are fewer than batch_size={batch_size}; lower batch_size")
    if isinstance(dataset, ShardDataset):
        keys = {dataset.keys[i] for i in indices}
        stream = ShardStream(dataset.shards, keys, dataset.size, len(indices) // batch_size, batch_size // world_size,
                             rank=rank, world_size=world_size, seed=seed)
        return StreamLoader(stream, num_workers, pin_memory)
    subset = Subset(dataset, indices.tolist())
    sampler = DistributedSampler(subset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(subset, batch_size=batch_size // world_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=True, persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None)


def load_images(dataset: Dataset, indices: np.ndarray) -> torch.Tensor:
    """uint8 [N, 3, H, W] of dataset[indices] (the held-out images, read once for evaluation)."""
    return torch.stack([dataset[int(i)][0] for i in indices])
