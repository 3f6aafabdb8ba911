"""The configuration's error type (no torch), raised wherever a config is checked."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""
