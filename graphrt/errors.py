"""Errors a user can act on. Each carries a one-line message; the CLI prints it without a traceback."""


class GraphrtError(Exception):
    """Base class of every error graphrt raises on purpose."""


class CheckpointError(GraphrtError):
    """The checkpoint directory is missing, not LocateAnything, or its tensors do not match the spec."""


class InputError(GraphrtError):
    """A request is unusable: unreadable image, empty query, prompt longer than the context."""


class OptionError(GraphrtError, ValueError):
    """An engine option is unusable (unknown device, dtype without support, a limit that is not a
    positive number). A ValueError too, so callers that caught bad option values still do."""
