"""The errors fedsub raises for bad input, at the bottom of the package so every layer can raise them.

`fedsub` (the CLI) turns each into one line on stderr and exit code 2, never a traceback.
"""


class ConfigError(ValueError):
    """A bad configuration; the message is one line that names the field and the fix."""


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read (corrupt, truncated, from another config): exit 2."""
