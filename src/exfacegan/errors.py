"""User-facing errors: each one is reported as a single line, without a traceback."""


class ExFaceGANError(Exception):
    """Base class for errors caused by the user's input (paths, files, configs)."""


class ConfigError(ExFaceGANError):
    """An impossible or inconsistent configuration."""


class CheckpointError(ExFaceGANError):
    """A checkpoint that is missing, corrupt, refused or of the wrong architecture."""


class DataError(ExFaceGANError):
    """Input data (latents, labels, images) of the wrong shape or content."""
