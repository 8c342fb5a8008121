"""The one family of error types every HadaKron piece raises.

Every error carries an optional ``path`` (the file or folder at fault) and renders as one line:
``<path>: <problem>``. Nodes and CLIs catch :class:`HadaKronError` and show that line; anything
else escaping the engine is a bug.
"""

from __future__ import annotations


class HadaKronError(Exception):
    """Base class: a clear, user-facing problem with an input, never a crash."""

    def __init__(self, message: str, path: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def with_path(self, path: str) -> HadaKronError:
        """Return the same error with ``path`` filled in if it had none."""
        if self.path is None:
            self.path = str(path)
            self.args = (str(self),)
        return self


class AdapterFileError(HadaKronError):
    """The file is unreadable, truncated, corrupt, pickled unsafely or not an adapter."""


class AdapterFormatError(HadaKronError):
    """Tensors of one module do not fit together (missing partner, two spellings, bad shapes)."""


class NonFiniteTensorError(AdapterFormatError):
    """A tensor holds NaN or Inf values."""


class ShapeMismatchError(HadaKronError):
    """An adapter module's delta does not fit the model weight it targets."""


class ArchitectureMismatchError(HadaKronError):
    """The adapter was made for another model family or size."""


class PathOutsideRootError(HadaKronError):
    """A user-supplied path escapes the folders HadaKron may read or write."""


class OutputExistsError(HadaKronError):
    """Writing would overwrite an existing file and overwriting was not asked for."""


class ConventionError(HadaKronError):
    """An unknown scale convention, or options that contradict each other."""


class OptionalDependencyError(HadaKronError):
    """An optional library (e.g. lycoris-lora) is needed for the chosen option but missing."""


class UnsupportedError(HadaKronError):
    """A valid input HadaKron cannot handle (e.g. a quantised weight format for baking)."""


class DatasetError(HadaKronError):
    """A training dataset cannot be built (empty or unreadable folder, bad config, nothing usable)."""
