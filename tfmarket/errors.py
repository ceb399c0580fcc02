"""Errors raised for bad user input; CLIs print them as one clear message (no traceback)."""

from __future__ import annotations


class TfmarketError(Exception):
    """Base class for errors a user can fix (bad data, bad config)."""


class DataError(TfmarketError):
    """A dataset file or folder is missing, malformed or unreadable. The message names it."""


class ConfigError(TfmarketError):
    """A config key or value is invalid. The message lists what is valid."""
