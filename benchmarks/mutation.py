"""Mutation score of the core modules: one `ast` mutant at a time, each run against its module's fast tests.

    python benchmarks/mutation.py                      # every module, at most 25 mutants each (seed 0)
    python benchmarks/mutation.py --modules config.py --per-module 40 --json /tmp/mutation.json

Each mutant changes one place in one module (a comparison flipped, + and - swapped, an integer or float constant
off by one, a condition negated, `and`/`or` swapped, a `not` dropped, or a statement dropped: a raise, a call, a return,
an augmented assignment or one that rebinds a name it reads or sets an attribute or item) and is written into a temporary copy of src/, conf/ and tests/, so the working tree is never
left mutated. `pytest -x -q -m "not slow"` then runs the module's test files in that copy with a per-mutant timeout
(3x the unmutated run, at least 60 s). A mutant is killed when the tests fail (or cannot import), survives when they
pass. The sample is seeded per module, so two runs with the same seed and code try the same mutants.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path("src/exfacegan")
# Module (under src/exfacegan) -> the fast test files that guard it.
MODULES: dict[str, list[str]] = {
    "stages/offsets.py": ["tests/test_sampling_settings.py", "tests/test_generate.py"],
    "label.py": ["tests/test_label.py", "tests/test_identity_controls.py"],
    "align/mtcnn.py": ["tests/test_mtcnn.py"],
    "data/recordio.py": ["tests/test_recordio.py", "tests/test_recordio_hostile.py"],
    "train/evaluation.py": ["tests/test_train_heads_eval.py", "tests/test_bin_files.py"],
    "embedders/onnx_ops.py": ["tests/test_onnx.py", "tests/test_onnx_hostile.py"],
    "config.py": ["tests/test_config.py", "tests/test_settings_table.py"],
}

COMPARISONS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
               ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
ARITHMETIC = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
              ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv}
DROPPABLE = (ast.Raise, ast.Expr, ast.Assign, ast.AugAssign, ast.Return)


@dataclass(frozen=True)
class Mutant:
    """The `kind` change at the `node`-th node of `ast.walk` (ops: the `op`-th operator of a comparison)."""

    node: int
    kind: str
    op: int = 0


@dataclass
class Outcome:
    module: str
    line: int
    change: str
    status: str  # killed, survived, timeout
    seconds: float


def _excluded(tree: ast.Module) -> set[int]:
    """Nodes no mutant touches: docstrings, annotations, imports and the names in `__all__`."""
    skip: set[ast.AST] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            skip.add(body[0])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skip.update(a.annotation for a in (*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs,
                                               node.args.vararg, node.args.kwarg) if a is not None and a.annotation)
            if node.returns is not None:
                skip.add(node.returns)
        if isinstance(node, ast.AnnAssign):
            skip.add(node.annotation)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.add(node)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            skip.add(node)
    return {id(inner) for outer in skip for inner in ast.walk(outer)}


def _mutations(node: ast.AST, parent_body: bool) -> list[tuple[str, int]]:
    kinds: list[tuple[str, int]] = []
    if isinstance(node, ast.Compare):
        kinds += [("compare", i) for i, op in enumerate(node.ops) if type(op) in COMPARISONS]
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in ARITHMETIC:
        kinds.append(("arithmetic", 0))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        kinds.append(("constant", 0))
    elif isinstance(node, ast.BoolOp):
        kinds.append(("boolean", 0))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        kinds.append(("drop_not", 0))
    if isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
        kinds.append(("negate", 0))
    if parent_body and isinstance(node, DROPPABLE) and (not isinstance(node, ast.Assign) or _rebinds(node)):
        kinds.append(("drop", 0))
    return kinds


def _rebinds(node: ast.Assign) -> bool:
    """`x = f(x)` or `a.b = ...`/`a[i] = ...`: dropping it leaves a value behind, not merely an unbound name."""
    read = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
    targets = [t for target in node.targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
    return all(not isinstance(t, ast.Name) or t.id in read for t in targets)


def _walk(tree: ast.Module) -> list[tuple[ast.AST, ast.AST | None]]:
    """Every node with its parent, in `ast.walk` order (the same for every parse of the same source)."""
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    return [(node, parents.get(id(node))) for node in ast.walk(tree)]


def _in_body(node: ast.AST, parent: ast.AST | None) -> bool:
    """A statement inside a function or class (module-level ones only break the import)."""
    return parent is not None and not isinstance(parent, ast.Module) and any(
        isinstance(getattr(parent, field, None), list) and node in getattr(parent, field)
        for field in ("body", "orelse", "finalbody", "handlers"))


def enumerate_mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    skip = _excluded(tree)
    found = []
    for index, (node, parent) in enumerate(_walk(tree)):
        if id(node) not in skip:
            found += [Mutant(index, kind, op) for kind, op in _mutations(node, _in_body(node, parent))]
    return found


def apply(source: str, mutant: Mutant) -> tuple[str, int, str]:
    """The mutated source, the line changed and a short description of the change."""
    tree = ast.parse(source)
    node, parent = _walk(tree)[mutant.node]
    before = ast.unparse(node).splitlines()[0][:70]
    line = getattr(node, "lineno", 0)
    if mutant.kind == "compare":
        node.ops[mutant.op] = COMPARISONS[type(node.ops[mutant.op])]()
    elif mutant.kind == "arithmetic":
        node.op = ARITHMETIC[type(node.op)]()
    elif mutant.kind == "constant":
        node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1
    elif mutant.kind == "boolean":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif mutant.kind == "drop_not":
        _replace(parent, node, node.operand)
    elif mutant.kind == "negate":
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif mutant.kind == "drop":
        _replace(parent, node, ast.Pass())
    after = "pass" if mutant.kind == "drop" else ast.unparse(node if mutant.kind != "drop_not" else node.operand)
    return ast.unparse(ast.fix_missing_locations(tree)), line, f"{mutant.kind}: `{before}` -> `{after.splitlines()[0][:70]}`"


def _replace(parent: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for field, value in ast.iter_fields(parent):
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is old:
                    value[i] = new
                    return
        elif value is old:
            setattr(parent, field, new)
            return
    raise ValueError("node not found under its parent")


def sample(module: str, mutants: list[Mutant], per_module: int, seed: int) -> list[Mutant]:
    chosen = random.Random(seed * 1_000_003 + zlib.crc32(module.encode())).sample(mutants, min(per_module, len(mutants)))
    return sorted(chosen, key=lambda m: (m.node, m.kind, m.op))


def make_copy(root: Path) -> Path:
    """src/, conf/, tests/ and pyproject.toml under root/repo, and root/shared linked to the checkout's ../shared."""
    repo = root / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for part in ("src", "conf", "tests"):
        shutil.copytree(REPO / part, repo / part, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", repo / "pyproject.toml")
    if (REPO.parent / "shared").is_dir():
        (root / "shared").symlink_to(REPO.parent / "shared")
    return repo


def run_tests(repo: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return "timeout", time.monotonic() - start
    except BaseException:  # interrupted: leave no test run behind
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return ("survived" if code == 0 else "killed"), time.monotonic() - start


def score_module(repo: Path, module: str, tests: list[str], per_module: int, seed: int, min_timeout: float) -> list[Outcome]:
    target = repo / PACKAGE / module
    original = target.read_text()
    status, baseline = run_tests(repo, tests, timeout=1800)
    if status != "survived":
        print(f"{module}: its tests fail without any mutant; skipped", flush=True)
        return []
    timeout = max(min_timeout, 3 * baseline)
    mutants = enumerate_mutants(original)
    chosen = sample(module, mutants, per_module, seed)
    print(f"{module}: {len(mutants)} mutants, trying {len(chosen)}; tests {baseline:.0f} s unmutated", flush=True)
    outcomes = []
    for mutant in chosen:
        mutated, line, change = apply(original, mutant)
        try:
            target.write_text(mutated)
            status, seconds = run_tests(repo, tests, timeout)
        finally:
            target.write_text(original)
        outcomes.append(Outcome(module, line, change, status, seconds))
        print(f"  {status:8s} {seconds:5.0f} s  line {line}: {change}", flush=True)
    return outcomes


def summary(outcomes: list[Outcome], modules: list[str]) -> str:
    lines = [f"{'module':24s} {'mutants':>7s} {'killed':>6s} {'timeout':>7s} {'survived':>8s} {'score':>6s}"]
    for module in modules:
        mine = [o for o in outcomes if o.module == module]
        if mine:
            count = {s: sum(o.status == s for o in mine) for s in ("killed", "timeout", "survived")}
            score = (count["killed"] + count["timeout"]) / len(mine)
            lines.append(f"{module:24s} {len(mine):7d} {count['killed']:6d} {count['timeout']:7d} "
                         f"{count['survived']:8d} {score:6.0%}")
    total = len(outcomes)
    if total:
        dead = sum(o.status != "survived" for o in outcomes)
        lines.append(f"{'all':24s} {total:7d} {'':6s} {'':7s} {total - dead:8d} {dead / total:6.0%}")
    lines.append("survivors:")
    lines += [f"  {o.module}:{o.line} {o.change}" for o in outcomes if o.status == "survived"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", default=list(MODULES), choices=list(MODULES), metavar="MODULE")
    parser.add_argument("--per-module", type=int, default=25, help="mutants sampled per module (default 25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-timeout", type=float, default=60.0, help="seconds a mutant's tests may take at least")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the temporary copy is removed on `kill`
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="exfacegan-mutation-") as root:
        repo = make_copy(Path(root))
        outcomes = []
        for module in args.modules:
            outcomes += score_module(repo, module, MODULES[module], args.per_module, args.seed, args.min_timeout)
    print(summary(outcomes, args.modules))
    print(f"{time.monotonic() - start:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))


if __name__ == "__main__":
    main()
