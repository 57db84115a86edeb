"""Failure handling for every entry point (`exfacegan.run`, `exfacegan.train`, the `exfacegan` CLI), written once.

A user error ends the program with ONE line `<prog>: error: ...` on stderr and exit status 2: an
`ExFaceGANError` (also as Hydra's instantiate wraps it), or a Hydra composition error (unknown key, unknown
group option, malformed override; named with the closest valid key or option). Anything else, including an
exception raised while handling a user error, keeps its traceback. `HYDRA_FULL_ERROR=1` shows Hydra's own
errors with their full traceback, as Hydra does.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from exfacegan.config import register_resolvers
from exfacegan.errors import ExFaceGANError, did_you_mean

EXIT_USER_ERROR = 2
# Errors Hydra raises while creating the output folder (e.g. run_dir names an existing file).
_OUTPUT_DIR_ERRORS = (FileExistsError, NotADirectoryError, PermissionError)
_PACKAGE = Path(__file__).resolve().parent

log = logging.getLogger("exfacegan")


def user_error(error: BaseException) -> ExFaceGANError | None:
    """The user-facing error that `error` is, or that Hydra's instantiate wrapped; None for anything else."""
    if isinstance(error, ExFaceGANError):
        return error
    if isinstance(error, InstantiationException) and isinstance(error.__cause__, ExFaceGANError):
        return error.__cause__
    return None


def report_errors(task: Callable[[], Any], prog: str = "exfacegan", cleanup: Callable[[], None] | None = None) -> int:
    """Run `task`; its exit status: the int it returns (else 0), or 2 after one line for a user error."""
    try:
        result = task()
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        if cleanup is not None:
            cleanup()
        if log.hasHandlers():  # the run's log; with no handler, Python would print it to stderr a second time
            log.error("%s", cause)
        return _fail(prog, str(cause))
    return result if isinstance(result, int) else 0


def run_hydra_task(task: Callable[[], Any], prog: str = "exfacegan", cleanup: Callable[[], None] | None = None) -> None:
    """The body of a `@hydra.main` function: `report_errors`, exiting with its status when that is not 0."""
    status = report_errors(task, prog, cleanup)
    if status:
        sys.exit(status)


def run_hydra_app(app: Callable[[], Any], prog: str = "exfacegan") -> None:
    """Call a `@hydra.main` function on sys.argv, reporting Hydra's composition errors in one line."""
    register_resolvers()
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises its errors here instead of printing and exiting 1
    try:
        app()
    except (HydraException, *_OUTPUT_DIR_ERRORS) as error:
        message = None if previous == "1" else _hydra_message(error)
        if message is None:
            raise
        sys.exit(_fail(prog, message))
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _hydra_message(error: BaseException) -> str | None:
    """One line for an error Hydra raised before the task ran; None if the task's own code raised it."""
    if _raised_by_task(error):
        return None
    if isinstance(error, _OUTPUT_DIR_ERRORS):
        return f"cannot create the run's output folder {error.filename}: {error.strerror}" if error.filename else None
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return (f"{group}={option} is not an option of {group}{did_you_mean(option, error.options)}; "
                f"choose from {', '.join(error.options)}")
    if isinstance(error, OverrideParseException):
        return f"cannot parse the override {error.override!r}: {_first_line(error)}"
    cause = error.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.parent_node is not None:
        match = re.search(r"override '([^']+)'", str(error))
        key = match.group(1) if match else str(cause.full_key)
        keys = _dotted_keys(OmegaConf.to_container(cause.parent_node._get_root(), resolve=False))
        return f"unknown setting {key}{did_you_mean(key, keys)}; a new key needs a leading +, e.g. +{key}=..."
    return _first_line(error)


def _raised_by_task(error: BaseException) -> bool:
    """Whether a frame of exfacegan code other than this module raised `error` (so it is no Hydra setup error)."""
    frames = traceback.extract_tb(error.__traceback__)
    return any(Path(frame.filename).resolve().is_relative_to(_PACKAGE) and Path(frame.filename).resolve() !=
               Path(__file__).resolve() for frame in frames)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    return [key for name, value in node.items() for key in (f"{prefix}{name}", *_dotted_keys(value, f"{prefix}{name}."))]
