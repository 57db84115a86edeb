"""User-facing errors: each one is reported as a single line, without a traceback (see `exfacegan.cli.entry`)."""

import difflib
from collections.abc import Iterable


class ExFaceGANError(Exception):
    """Base class for errors caused by the user's input (paths, files, configs)."""


class ConfigError(ExFaceGANError):
    """An impossible or inconsistent configuration."""


class CheckpointError(ExFaceGANError):
    """A checkpoint that is missing, corrupt, refused or of the wrong architecture."""


class DataError(ExFaceGANError):
    """Input data (latents, labels, images) of the wrong shape or content."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' for the candidate closest to a misspelt `word`, or ''."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
