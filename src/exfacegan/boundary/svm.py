"""`boundary=svm`: the paper's solver -- one scikit-learn LinearSVC(dual=False) per reference (liblinear's
primal trust-region Newton; squared hinge, L2, C, intercept_scaling=1), in parallel over references with
joblib. The shared feature matrix goes to the workers once (joblib memory-maps it); each task gets only
index arrays, and nothing is written per reference. Use it as the reference implementation and for small
runs; `batched` solves the same problem for all references at once.
"""

from __future__ import annotations

import warnings

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC
from tqdm.auto import tqdm

from exfacegan.boundary.options import FitOptions, SolverOutput
from exfacegan.boundary.preprocess import FitData, assign_roles

REFERENCES_PER_TASK = 4


def fit_one(features: np.ndarray, train: np.ndarray, val: np.ndarray, targets: np.ndarray,
            C: float, tol: float, max_iter: int) -> tuple[np.ndarray, float, float, bool]:
    """LinearSVC on `features[train]` with class 1 = dissimilar (targets > 0): weights [d + 1], accuracies."""
    classifier = LinearSVC(dual=False, C=C, tol=tol, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(features[train], (targets[train] > 0).astype(np.int64))
    def score(index: np.ndarray) -> float:
        if index.size == 0:
            return float("nan")
        return float((classifier.predict(features[index]) == (targets[index] > 0)).mean())
    weights = np.append(classifier.coef_.ravel(), classifier.intercept_[0])
    return weights, score(train), score(val), bool(np.max(classifier.n_iter_) < max_iter)


def _fit_task(features, tasks, C, tol, max_iter):
    return [fit_one(features, *task, C, tol, max_iter) for task in tasks]


def solve(data: FitData, labels: np.ndarray, rows: np.ndarray, opts: FitOptions) -> SolverOutput:
    features = data.features[:, :data.latent_dim].double().cpu().numpy()
    max_iter = opts.max_iter or 1000
    count = labels.shape[0]

    def tasks():
        for start in range(0, count, REFERENCES_PER_TASK):
            part = slice(start, min(start + REFERENCES_PER_TASK, count))
            roles = assign_roles(data, labels[part], rows[part], balance=opts.balance, val_fraction=opts.val_fraction)
            train, val, targets = (t.cpu().numpy() for t in (roles.train, roles.val, roles.targets))
            yield [(np.flatnonzero(train[k]), np.flatnonzero(val[k]), targets[k]) for k in range(len(train))]

    results = []
    parallel = Parallel(n_jobs=opts.n_jobs, return_as="generator")
    jobs = (delayed(_fit_task)(features, batch, opts.C, opts.tol or 1e-4, max_iter) for batch in tasks())
    with tqdm(total=count, desc="boundaries (svm)", unit="ref", disable=not opts.progress) as bar:
        for batch in parallel(jobs):
            results.extend(batch)
            bar.update(len(batch))
    weights = np.stack([r[0] for r in results])
    train_accuracy, val_accuracy, converged = (np.array([r[k] for r in results]) for k in (1, 2, 3))
    return SolverOutput(weights, train_accuracy, val_accuracy, converged.astype(bool))
