"""The one error the writers raise for input they refuse."""

from __future__ import annotations


class WriterError(ValueError):
    """A layer or map cannot be written: wrong layer type, no slide reference, bad shape."""
