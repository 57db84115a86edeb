"""`boundary=logistic`: L2-regularised logistic regression for every reference at once (batched Newton-CG).

    min_w 0.5 * ||w||^2 + C * sum_{i in train_r} log(1 + exp(-y_ri * [x_i, 1] . w))

the objective of scikit-learn's LogisticRegression(solver='liblinear') with intercept_scaling=1 (regularised
intercept), with the same preprocessing as the other solvers.

When to use it: a smooth loss whose every training code contributes (weighted by how uncertain it is), so
its boundaries change smoothly with the data and its decision values are calibrated log-odds of
"dissimilar"; Newton converges quadratically. It costs about as much as `batched`. Prefer `batched` to
reproduce the paper, `ridge` when speed matters most.
"""

from __future__ import annotations

import numpy as np

from exfacegan.boundary.options import FitOptions, SolverOutput
from exfacegan.boundary.batched import newton_chunk, solve_in_chunks
from exfacegan.boundary.newton import LOGISTIC
from exfacegan.boundary.preprocess import FitData


def solve(data: FitData, labels: np.ndarray, rows: np.ndarray, opts: FitOptions) -> SolverOutput:
    return solve_in_chunks(data, labels, rows, opts, newton_chunk(LOGISTIC), "logistic")
