"""User-facing errors: one clear message naming the bad input, no traceback noise in the CLI."""


class BenchError(Exception):
    """A problem with the user's input or environment, reported as one line by the CLI."""


class ConfigError(BenchError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class InputError(BenchError, ValueError):
    """An input (model folder, image folder, concept, output folder) is missing or unusable."""
