"""The options every boundary solver reads and the output each returns (a module of its own, so that the
solvers need not import the package that dispatches to them)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np

from exfacegan.boundary.preprocess import check_options
from exfacegan.errors import ConfigError

SOLVERS = ("svm", "batched", "ridge", "logistic")
SPACES = ("scaled", "original")


@dataclass(frozen=True)
class FitOptions:
    """Every option of `fit_boundaries`; solvers ignore the ones that are not theirs."""

    scaling: str = "minmax"
    balance: bool = True
    val_fraction: float = 0.3
    C: float = 1.0
    space: str = "scaled"
    seed: int = 0
    order: str = "shared"
    min_per_class: int = 1
    on_degenerate: str = "skip"  # skip | raise
    tol: float | None = None  # None: 1e-4 (LinearSVC's default) for svm/batched/logistic, 1e-5 for ridge
    max_iter: int | None = None  # None: 1000 for svm (liblinear), 50 Newton iterations for batched/logistic
    device: str = "cpu"  # batched, ridge, logistic
    chunk_size: int | None = None  # references per chunk; None: from memory_budget_gb
    memory_budget_gb: float = 1.0
    n_jobs: int = -1  # svm
    progress: bool = True

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> FitOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown boundary option(s) {unknown}; valid options are {sorted(known)}")
        if "device" in options:
            options = {**options, "device": str(options["device"])}
        result = cls(**options)
        check_options(result.scaling, result.balance, result.val_fraction, result.order, result.min_per_class)
        if not (np.isfinite(result.C) and result.C > 0):
            raise ConfigError(f"boundary.C must be a positive number, got {result.C}")
        if result.space not in SPACES:
            raise ConfigError(f"boundary.space must be one of {SPACES}, got {result.space!r}")
        if result.on_degenerate not in ("skip", "raise"):
            raise ConfigError(f"boundary.on_degenerate must be 'skip' or 'raise', got {result.on_degenerate!r}")
        if result.tol is not None and not result.tol > 0:
            raise ConfigError(f"boundary.tol must be > 0, got {result.tol}")
        if result.chunk_size is not None and result.chunk_size < 1:
            raise ConfigError(f"boundary.chunk_size must be >= 1 or null, got {result.chunk_size}")
        if not result.memory_budget_gb > 0:
            raise ConfigError(f"boundary.memory_budget_gb must be > 0, got {result.memory_budget_gb}")
        return result


class SolverOutput(NamedTuple):
    weights: np.ndarray  # float64 [R', d + 1] in the scaled space, last = intercept; + on the dissimilar side
    train_accuracy: np.ndarray  # [R']
    val_accuracy: np.ndarray  # [R']
    converged: np.ndarray  # bool [R']
