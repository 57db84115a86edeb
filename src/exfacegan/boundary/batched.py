"""`boundary=batched`: scikit-learn LinearSVC's primal problem for every reference at once, in PyTorch.

    min_w 0.5 * ||w||^2 + C * sum_{i in train_r} max(0, 1 - y_ri * [x_i, 1] . w)^2

(squared hinge, L2, intercept as a regularised constant feature of value 1: LinearSVC(dual=False) with
intercept_scaling=1), solved by batched Newton-CG (`newton.py`) on the shared feature matrix, references in
chunks sized to `memory_budget_gb` (or `chunk_size`), on CPU or GPU (`device`). Use it instead of `svm` for
paper-scale runs: same boundaries to the solver tolerance (LinearSVC's tol = 1e-4), all references sharing
each matrix product instead of one liblinear run each.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from exfacegan.boundary.options import FitOptions, SolverOutput
from exfacegan.boundary.newton import SQUARED_HINGE, EigenPreconditioner, Loss, newton_cg
from exfacegan.boundary.preprocess import FitData, Roles, assign_roles, chunk_size_for

# Bytes held per (reference, code) pair while a chunk is solved: the Newton-CG working arrays.
BYTES_PER_ENTRY = 64

# (features, roles, preconditioner, options) -> (weights [r, D], converged [r]); the features are the leading
# block of codes that holds every training code of the chunk.
ChunkFit = Callable[[torch.Tensor, Roles, EigenPreconditioner, FitOptions], tuple[torch.Tensor, torch.Tensor]]


def accuracy(decision: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of masked codes on the right side (decision > 0 predicts dissimilar, as LinearSVC.predict)."""
    correct = ((decision > 0) == (targets > 0)) & mask
    count = mask.sum(dim=1, dtype=torch.int32)
    return torch.where(count > 0, correct.sum(dim=1, dtype=torch.int32) / count.clamp(min=1), torch.nan)


def solve_in_chunks(
    data: FitData, labels: np.ndarray, rows: np.ndarray, opts: FitOptions, fit_chunk: ChunkFit, name: str,
) -> SolverOutput:
    count, num_codes = labels.shape[0], data.features.shape[0]
    chunk = opts.chunk_size or chunk_size_for(num_codes, opts.memory_budget_gb * 2**30, BYTES_PER_ENTRY)
    weights = np.zeros((count, data.latent_dim + 1), dtype=np.float64)
    train_accuracy, val_accuracy = np.zeros(count), np.zeros(count)
    converged = np.zeros(count, dtype=bool)
    with tqdm(total=count, desc=f"boundaries ({name})", unit="ref", disable=not opts.progress) as bar:
        for start in range(0, count, chunk):
            part = slice(start, min(start + chunk, count))
            roles = assign_roles(data, labels[part], rows[part], balance=opts.balance, val_fraction=opts.val_fraction)
            # With the shared order the training codes of every reference sit in a leading block of the codes
            # (the rest are validation codes); solving on that block only saves about a quarter of the work.
            used = int(torch.nonzero(roles.train.any(dim=0)).max()) + 1
            block = Roles(roles.targets[:, :used], roles.train[:, :used], roles.val[:, :used])
            features = data.features[:used]
            majority = block.train.sum(dim=0, dtype=torch.int32) * 2 > len(block.train)  # codes most train on
            preconditioner = EigenPreconditioner(features, majority.to(features.dtype))
            w, done = fit_chunk(features, block, preconditioner, opts)
            decision = w @ data.features.T
            weights[part] = w[:, : data.latent_dim + 1].double().cpu().numpy()
            train_accuracy[part] = accuracy(decision, roles.targets, roles.train).cpu().numpy()
            val_accuracy[part] = accuracy(decision, roles.targets, roles.val).cpu().numpy()
            converged[part] = done.cpu().numpy()
            del roles, decision
            bar.update(part.stop - part.start)
    return SolverOutput(weights, train_accuracy, val_accuracy, converged)


def newton_chunk(loss: Loss, default_tol: float = 1e-4) -> ChunkFit:
    def fit(features: torch.Tensor, roles: Roles, preconditioner: EigenPreconditioner, opts: FitOptions):
        costs = roles.train.to(features.dtype) * opts.C
        result = newton_cg(features, roles.targets, costs, loss, preconditioner=preconditioner,
                           tol=opts.tol or default_tol, max_iter=opts.max_iter or 50)
        return result.weights, result.converged
    return fit


def solve(data: FitData, labels: np.ndarray, rows: np.ndarray, opts: FitOptions) -> SolverOutput:
    return solve_in_chunks(data, labels, rows, opts, newton_chunk(SQUARED_HINGE), "batched")
