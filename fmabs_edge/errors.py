"""The package's exception hierarchy.

Every error a user can cause derives from :class:`FmabsError`; the CLI prints its message as one
line and exits with code 2. Messages say what failed, show the value and give the fix.
"""

from __future__ import annotations


class FmabsError(Exception):
    """Base of every error fmabs-edge raises on purpose."""


class UsageError(FmabsError):
    """A flag or parameter has a value that cannot work (for example ``batch_size=0``)."""


class DataError(FmabsError):
    """A data folder, image or mask is missing, empty or unreadable."""


class CorruptImageError(DataError):
    """One image file cannot be decoded completely; runners skip it and report it by name."""


class ModelError(FmabsError):
    """A checkpoint, ONNX file or engine does not match what fmabs-edge expects."""


class MissingExtraError(FmabsError):
    """An optional dependency is not installed; the message names the extra to install."""


class GateError(FmabsError):
    """A converted artefact failed its accuracy gate; the artefact is kept and marked as failing."""


def missing_extra(module: str, extra: str, purpose: str) -> MissingExtraError:
    """Build the error for an optional import that failed, naming the pip extra that brings it."""
    return MissingExtraError(
        f"{purpose} needs the Python package '{module}', which is not installed. "
        f"Install it with: pip install 'fmabs-edge[{extra}]'"
    )
