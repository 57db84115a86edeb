"""Run a loader on a hostile file in a separate process, under a memory limit, and read how it ended.

A hostile file may crash the interpreter (SIGSEGV), exhaust memory or poison global state; none of that must
reach the test process. `load_isolated` calls one loader (a dotted `module:function`) through the same
one-line error wrapper as the console commands, in a fresh interpreter whose address space is capped, and
afterwards checks that an ordinary `torch.load(weights_only=True)` of a known tensor still returns it unchanged.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MEMORY_LIMIT = 3 * 1024**3  # bytes of address space; torch alone maps about 0.65 GiB

_RUNNER = r"""
import importlib, io, sys
import torch
from exfacegan.cli.entry import report_errors

module_name, function_name = sys.argv[1].split(":")
loader = getattr(importlib.import_module(module_name), function_name)
status = report_errors(lambda: (loader(*sys.argv[2:]), 0)[1])
buffer = io.BytesIO()
torch.save(torch.arange(4.0), buffer)
buffer.seek(0)
if not torch.equal(torch.load(buffer, weights_only=True), torch.arange(4.0)):
    print("POISONED: torch.load returns other values after the load", file=sys.stderr)
    sys.exit(99)
sys.exit(status)
"""


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def assert_refused(self, *fragments: str) -> str:
        """Exit status 2 with exactly one `exfacegan: error:` line (containing each fragment); returns the line."""
        assert self.returncode == 2, f"exit status {self.returncode}, stderr:\n{self.stderr[-3000:]}"
        assert len(self.lines) == 1 and self.lines[0].startswith("exfacegan: error:"), self.stderr[-3000:]
        for fragment in fragments:
            assert fragment in self.lines[0], self.lines[0]
        return self.lines[0]


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def load_isolated(loader: str, *args: str | Path, timeout: float = 120, cwd: Path | None = None) -> Outcome:
    """Call `loader` ("package.module:function") on `args` in a fresh, memory-capped interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, loader, *map(str, args)], capture_output=True, text=True, timeout=timeout,
        env=env, cwd=cwd, preexec_fn=_cap_memory,
    )
    return Outcome(result.returncode, result.stdout, result.stderr)
