"""User-facing errors: one clear message naming the bad input, no traceback noise in the CLI."""

from __future__ import annotations


def shown(path: object) -> str:
    """A path or name as a one-line message shows it: as typed, or quoted (``repr``) when it holds a line
    break or another control character."""
    text = str(path)
    return text if text.isprintable() else repr(text)


class BenchError(Exception):
    """A problem with the user's input or environment, reported as one line by the CLI."""


class ConfigError(BenchError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class InputError(BenchError, ValueError):
    """An input (model folder, image folder, concept, output folder) is missing or unusable."""


class NonFiniteError(BenchError, ArithmeticError):
    """NaN or Inf where a number must be finite: a diverged method, never a score.

    ``stage`` says where it was caught (erase loss, edited weights, latents, decoded images,
    judge features); ``where`` names the method and concept once the harness knows them.
    """

    def __init__(self, stage: str, detail: str = "", where: str = "") -> None:
        self.stage, self.detail, self.where = stage, detail, where
        text = f"non-finite {stage}" + (f" ({detail})" if detail else "")
        super().__init__(f"{where}: {text}" if where else text)

    def named(self, method: str, concept: str) -> NonFiniteError:
        """The same error, naming the method and concept it happened in."""
        return NonFiniteError(self.stage, self.detail, f"method {method}, concept {concept!r}")


class RecordError(BenchError, ValueError):
    """Run records that cannot be trusted (edited, truncated) or cannot be written."""


class RunLockedError(BenchError, RuntimeError):
    """Another live ``bench run`` drives this run folder."""
