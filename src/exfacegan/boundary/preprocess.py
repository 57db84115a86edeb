"""Preprocessing shared by every boundary solver: scaling, class balancing, train/validation split.

Scaling (`scaling='minmax'`, the paper): each latent dimension is mapped to [-1, 1] like scikit-learn's
`MinMaxScaler(feature_range=(-1, 1))` (a constant dimension gets scale 2, as there). The paper fits one
scaler per reference on the N - 1 other codes; here one scaler is fit on all codes that carry a label for
some reference, so that every reference shares one feature matrix. The two differ only for a reference whose
own code is the extreme of a dimension (about d * 2 / N of them, by a small amount in that dimension).

Per reference (codes labelled -1 never take part):
- an order of the codes: `order='shared'` (default) is one seeded random permutation used by every reference;
  `order='independent'` is a seeded random permutation per reference (hashed from seed, reference and code,
  so that it does not depend on chunking);
- `balance=True` (paper): keep the first k = min(#similar, #dissimilar) codes of each class in that order;
  `balance=False` keeps all;
- of the kept codes of each class, the first floor(k_c * (1 - val_fraction)) in that order are training
  codes, the rest validation codes (the paper's stratified 70/30 split: int(k * 0.7) per class).

For one reference, either order gives a uniformly random balanced subset and a uniformly random stratified
split, as the paper's `np.random.shuffle` does. With the shared order the training sets of different
references overlap heavily, which the ridge solver exploits; the results of any single boundary are
statistically the same. The paper code sorts by label and keeps the first/last M // 2 codes, which equals
`balance=True` whenever the classes are balanced (the median threshold) and mislabels codes otherwise.

Targets: +1 dissimilar (label 0), -1 similar (label 1), so that a classifier's weight vector points to the
dissimilar side, as the paper's normal does (it trains with 1 = dissimilar).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from exfacegan.errors import ConfigError, DataError

SCALINGS = ("minmax", "none")
ORDERS = ("shared", "independent")


@dataclass(frozen=True)
class Scaling:
    """scaled = latents * scale + offset (per dimension)."""

    scale: np.ndarray
    offset: np.ndarray

    @classmethod
    def fit(cls, latents: np.ndarray, kind: str) -> Scaling:
        dim = latents.shape[1]
        if kind == "none":
            return cls(np.ones(dim), np.zeros(dim))
        low, high = latents.min(axis=0).astype(np.float64), latents.max(axis=0).astype(np.float64)
        span = high - low
        span[span == 0.0] = 1.0
        scale = 2.0 / span
        return cls(scale, -1.0 - low * scale)

    def transform(self, latents: np.ndarray) -> np.ndarray:
        return latents * self.scale + self.offset


@dataclass(frozen=True)
class FitData:
    """What all references share: features [M, D] -- the scaled latents of the labelled codes in the shared
    order (columns :d), a constant 1 column for the regularised intercept (column d, liblinear's
    intercept_scaling=1), then zero columns up to a multiple of 8 (faster matrix products; their weights
    stay exactly 0)."""

    features: torch.Tensor
    latent_dim: int
    codes: np.ndarray  # latent row of each feature row
    scaling: Scaling
    seed: int
    order: str


@dataclass(frozen=True)
class Roles:
    """One chunk of references on the feature rows: targets +1/-1 and training/validation masks [r, M]."""

    targets: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor


def check_inputs(latents: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    latents = np.asarray(latents)
    labels = np.asarray(labels)
    if latents.ndim != 2 or latents.shape[0] < 2 or latents.shape[1] < 1:
        raise DataError(f"latents must be a [N, d] array, got shape {latents.shape}")
    if labels.ndim != 2 or labels.shape[1] != latents.shape[0] or labels.shape[0] < 1:
        raise DataError(f"labels must be [R, N={latents.shape[0]}] (one row per reference), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < -1 or labels.max() > 1:
        raise DataError("labels must be integers: 1 (similar), 0 (dissimilar) and -1 (left out)")
    if not np.isfinite(latents).all():
        raise DataError("latents contain NaN or infinite values")
    return latents, labels.astype(np.int8, copy=False)


def check_options(scaling: str, balance: bool, val_fraction: float, order: str, min_per_class: int) -> None:
    if scaling not in SCALINGS:
        raise ConfigError(f"boundary.scaling must be one of {SCALINGS}, got {scaling!r}")
    if not isinstance(balance, (bool, np.bool_)):
        raise ConfigError(f"boundary.balance must be true or false, got {balance!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"boundary.val_fraction must be in [0, 1), got {val_fraction}")
    if order not in ORDERS:
        raise ConfigError(f"boundary.order must be one of {ORDERS}, got {order!r}")
    if min_per_class < 1:
        raise ConfigError(f"boundary.min_per_class must be >= 1, got {min_per_class}")


def prepare(
    latents: np.ndarray, labels: np.ndarray, *, scaling: str, seed: int, order: str, device: str | torch.device
) -> FitData:
    used = np.flatnonzero((labels >= 0).any(axis=0))
    if used.size < 2:
        raise DataError(f"only {used.size} codes carry a label for any reference; nothing to fit")
    fitted = Scaling.fit(latents[used], scaling)
    codes = used[np.random.default_rng(seed).permutation(used.size)]
    scaled = fitted.transform(latents[codes].astype(np.float64))
    dim = latents.shape[1]
    features = torch.zeros((codes.size, -(-(dim + 1) // 8) * 8), dtype=torch.float32, device=device)
    features[:, :dim] = torch.from_numpy(scaled.astype(np.float32)).to(device)
    features[:, dim] = 1.0
    return FitData(features, dim, codes, fitted, seed, order)


def split_counts(labels: np.ndarray, balance: bool, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation codes per class: two int64 [R, 2] arrays (column 0 similar, 1 dissimilar)."""
    per_class = np.stack([(labels == 1).sum(axis=1), (labels == 0).sum(axis=1)], axis=1).astype(np.int64)
    kept = np.repeat(per_class.min(axis=1, keepdims=True), 2, axis=1) if balance else per_class
    train = np.floor(kept * (1.0 - val_fraction)).astype(np.int64)
    return train, kept - train


def degenerate_reasons(
    labels: np.ndarray, *, balance: bool = True, val_fraction: float = 0.3, min_per_class: int = 1
) -> dict[int, str]:
    """Reference row -> why no boundary can be fit for it (absent when it can)."""
    train, val = split_counts(labels, balance, val_fraction)
    reasons = {}
    too_few = (train < min_per_class).any(axis=1) | ((val_fraction > 0) & (val < 1).any(axis=1))
    for row in np.flatnonzero(too_few):
        similar, dissimilar = int((labels[row] == 1).sum()), int((labels[row] == 0).sum())
        reasons[int(row)] = (
            f"{similar} similar and {dissimilar} dissimilar codes leave {train[row, 0]}/{train[row, 1]} training and "
            f"{val[row, 0]}/{val[row, 1]} validation codes per class (need >= {min_per_class} training"
            f"{' and >= 1 validation' if val_fraction > 0 else ''} per class)"
        )
    return reasons


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a counter-based hash, so that random keys do not depend on chunking."""
    values = values + np.uint64(0x9E3779B97F4A7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _independent_order(data: FitData, reference_ids: np.ndarray, device: torch.device) -> torch.Tensor:
    with np.errstate(over="ignore"):
        per_reference = _mix64(np.uint64(data.seed) * np.uint64(0x100000001B3) ^ reference_ids.astype(np.uint64))
        keys = _mix64(per_reference[:, None] + data.codes.astype(np.uint64)[None, :])
    return torch.from_numpy((keys >> np.uint64(1)).astype(np.int64)).to(device).argsort(dim=1)


def assign_roles(
    data: FitData, labels: np.ndarray, reference_ids: np.ndarray, *, balance: bool, val_fraction: float
) -> Roles:
    """Roles of every feature row for the references whose label rows are `labels` [r, N] (int8)."""
    device = data.features.device
    block = torch.from_numpy(np.ascontiguousarray(labels[:, data.codes])).to(device)
    train_counts, val_counts = split_counts(labels, balance, val_fraction)
    train_limit = torch.from_numpy(train_counts.astype(np.int32)).to(device)
    kept_limit = torch.from_numpy((train_counts + val_counts).astype(np.int32)).to(device)
    permutation = _independent_order(data, reference_ids, device) if data.order == "independent" else None
    if permutation is not None:
        block = block.gather(1, permutation)
    similar, dissimilar = block == 1, block == 0
    # 1-based rank of each code within its class, in the processing order.
    similar_rank = similar.cumsum(dim=1, dtype=torch.int32)
    dissimilar_rank = dissimilar.cumsum(dim=1, dtype=torch.int32)
    train = (similar & (similar_rank <= train_limit[:, :1])) | (dissimilar & (dissimilar_rank <= train_limit[:, 1:]))
    val = (similar & (similar_rank <= kept_limit[:, :1])) | (dissimilar & (dissimilar_rank <= kept_limit[:, 1:]))
    val &= ~train
    targets = torch.where(dissimilar, 1.0, -1.0)
    if permutation is not None:
        inverse = permutation.argsort(dim=1)
        train, val, targets = (t.gather(1, inverse) for t in (train, val, targets))
    return Roles(targets, train, val)


def chunk_size_for(num_rows: int, budget_bytes: float, bytes_per_entry: int) -> int:
    """References per chunk so that `bytes_per_entry` bytes for each reference x feature row fit the budget."""
    return max(1, int(budget_bytes // max(1, num_rows * bytes_per_entry)))
