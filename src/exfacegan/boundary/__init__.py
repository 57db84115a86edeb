"""Identity boundaries: for each reference, a hyperplane in latent space separating codes of the same identity
from the others, fitted on ONE shared latent matrix and the label matrix (1 similar, 0 dissimilar, -1 left out).

Solvers (all on the same preprocessing, see `preprocess`):
- `svm`: the paper -- scikit-learn `LinearSVC(dual=False)` (squared hinge, L2, C) per reference, in parallel
  over references with joblib. Reference implementation; about 0.3 s per reference at N = 11,000.
- `batched`: the same LinearSVC objective for all references at once (batched Newton-CG, PyTorch, CPU/GPU);
  agrees with `svm` to the solver tolerance, minutes instead of an hour at paper scale.
- `ridge`: regularised least squares on +-1 targets (the squared hinge with every code active); one shared
  factorisation, seconds at paper scale. A cheaper, slightly different boundary.
- `logistic`: L2 logistic regression, batched Newton-CG; smooth loss, uses every code.

Output convention (the paper's): each unit normal points to the DISSIMILAR side, so new codes of the
reference's identity are w - u * n. `space='scaled'` (default, paper code) returns the normal learnt on
MinMax-scaled latents, which the paper applies as is to unscaled w; `space='original'` maps it back through
the affine scaling (normal_orig ~ normal_scaled * scale, chain rule) and re-normalises, so that it is the
classifier's normal in w itself. Intercepts belong to the unit normal in the returned space: the decision
value n . x + intercept is > 0 on the dissimilar side (x scaled or not, matching `space`).

A reference whose labels leave fewer than `min_per_class` training codes (or no validation code) in either
class gets valid=False, zero normal and zero accuracies, a logged reason and one warning with the count
(`on_degenerate='raise'` makes it an error instead). No NaN is ever returned for such references.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch

from exfacegan.boundary.options import SOLVERS, FitOptions, SolverOutput
from exfacegan.boundary.preprocess import FitData, check_inputs, degenerate_reasons, prepare
from exfacegan.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["IdentityBoundaries", "FitOptions", "SolverOutput", "fit_boundaries", "degenerate_reasons", "SOLVERS"]


class IdentityBoundaries(NamedTuple):
    normals: np.ndarray  # float32 [R, d], unit (zeros where not valid), pointing to the dissimilar side
    intercepts: np.ndarray  # float32 [R], for the unit normal in the returned space
    val_accuracy: np.ndarray  # float32 [R], fraction of validation codes classified correctly (NaN if val_fraction=0)
    train_accuracy: np.ndarray  # float32 [R]
    valid: np.ndarray  # bool [R]


def _solver(name: str):
    if name == "svm":
        from exfacegan.boundary.svm import solve
    elif name == "batched":
        from exfacegan.boundary.batched import solve
    elif name == "ridge":
        from exfacegan.boundary.ridge import solve
    elif name == "logistic":
        from exfacegan.boundary.logistic import solve
    else:
        raise ConfigError(f"unknown boundary solver {name!r}; choose one of {SOLVERS}")
    return solve


def _to_space(weights: np.ndarray, data: FitData, space: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit normals, their intercepts and the norm used (0 where the weights have no direction)."""
    direction, intercept = weights[:, :-1], weights[:, -1]
    if space == "original":  # w.(x * scale + offset) + b = (w * scale).x + (w.offset + b)
        intercept = intercept + direction @ data.scaling.offset
        direction = direction * data.scaling.scale
    norm = np.linalg.norm(direction, axis=1)
    safe = np.where(norm > 0, norm, 1.0)
    return direction / safe[:, None], intercept / safe, norm


def fit_boundaries(
    latents: np.ndarray, labels: np.ndarray, solver: str = "svm", *, rows: np.ndarray | None = None, **options: Any
) -> IdentityBoundaries:
    """One boundary per row of `labels` [R, N] (int8: 1 similar, 0 dissimilar, -1 left out) on `latents` [N, d].

    `rows` fits only those label rows (results in that order) and gives exactly what the full fit gives for
    them: the preprocessing is always computed from every row, so a fit can be split and resumed in pieces.
    Options (see FitOptions): scaling, balance, val_fraction, C, space, seed, order, min_per_class,
    on_degenerate, tol, max_iter, device, chunk_size, memory_budget_gb, n_jobs, progress.
    """
    opts = FitOptions.from_kwargs(options)
    solve = _solver(solver)
    latents, labels = check_inputs(latents, labels)
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"boundary.device={opts.device} but CUDA is not available; use device=cpu")
    selected = np.arange(labels.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if selected.size and (selected.min() < 0 or selected.max() >= labels.shape[0]):
        raise DataError(f"rows must index the {labels.shape[0]} label rows, got {selected.min()}..{selected.max()}")
    count, dim = selected.size, latents.shape[1]
    reasons = {int(selected[position]): why for position, why in degenerate_reasons(
        labels[selected], balance=opts.balance, val_fraction=opts.val_fraction, min_per_class=opts.min_per_class,
    ).items()}
    if reasons and opts.on_degenerate == "raise":
        first = next(iter(reasons))
        raise DataError(
            f"{len(reasons)} of {count} references cannot be fit, e.g. reference row {first}: {reasons[first]}"
        )
    fit_positions = np.array([p for p in range(count) if int(selected[p]) not in reasons], dtype=np.int64)
    fit_rows = selected[fit_positions]
    normals = np.zeros((count, dim), dtype=np.float32)
    intercepts = np.zeros(count, dtype=np.float32)
    val_accuracy = np.zeros(count, dtype=np.float32)
    train_accuracy = np.zeros(count, dtype=np.float32)
    valid = np.zeros(count, dtype=bool)
    if fit_rows.size:
        data = prepare(latents, labels, scaling=opts.scaling, seed=opts.seed, order=opts.order, device=opts.device)
        output = solve(data, labels[fit_rows], fit_rows, opts)
        unit, intercept, norm = _to_space(output.weights, data, opts.space)
        no_direction = ~(norm > 0) | ~np.isfinite(output.weights).all(axis=1)
        for row in fit_rows[no_direction]:
            reasons[int(row)] = "the fitted weights have no direction (zero or non-finite normal)"
        good = ~no_direction
        normals[fit_positions[good]] = unit[good]
        intercepts[fit_positions[good]] = intercept[good]
        val_accuracy[fit_positions[good]] = output.val_accuracy[good]
        train_accuracy[fit_positions[good]] = output.train_accuracy[good]
        valid[fit_positions[good]] = True
        if not output.converged.all():
            warnings.warn(
                f"{int((~output.converged).sum())} of {fit_rows.size} boundaries ({solver}) stopped at the iteration "
                "limit before reaching the tolerance; raise boundary.max_iter or loosen boundary.tol", stacklevel=2,
            )
    if reasons:
        for row, why in list(reasons.items())[:5]:
            log.warning("reference row %d has no boundary: %s", row, why)
        warnings.warn(f"{len(reasons)} of {count} references have no boundary (valid=False); see the log for why",
                      stacklevel=2)
    return IdentityBoundaries(normals, intercepts, val_accuracy, train_accuracy, valid)
