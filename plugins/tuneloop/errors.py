"""Typed errors. Every error a user can cause carries problems that name where and how to fix it.

A `Problem` is one line of user-facing output: ``file:line: field.path: message (allowed: ...)``.
Errors hold a list of problems so that one run reports everything wrong with a file at once,
instead of making the user fix one mistake per attempt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a user's input, located as precisely as we can."""

    path: str
    """Dotted field path inside the document, e.g. ``training_config.model.optim.lr``."""
    message: str
    source: str = ""
    """The file (or ``--set``) the value came from."""
    line: int | None = None
    """1-based line in ``source``, when known."""
    allowed: str | None = None
    """The values or range the field accepts."""
    fix: str | None = None
    """What to change, when the message alone does not make it obvious."""

    def format(self) -> str:
        where = self.source or "<input>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        if self.allowed:
            text += f" (allowed: {self.allowed})"
        if self.fix:
            text += f"; fix: {self.fix}"
        return text

    def located(self, source: str, line: int | None) -> Problem:
        """The same problem, attributed to a file and line if it has none yet."""
        return Problem(
            path=self.path,
            message=self.message,
            source=self.source or source,
            line=self.line if self.line is not None else line,
            allowed=self.allowed,
            fix=self.fix,
        )


class TuneloopError(Exception):
    """Base of every error tuneloop raises on purpose."""

    def __init__(self, problems: Iterable[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(path="", message=problems)]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(p.format() for p in self.problems))


class MessageError(TuneloopError):
    """An error about no file or field (a service, a request, a run): ``str()`` is the message
    alone, with no location in front of it."""

    def __init__(self, message: str) -> None:
        super().__init__([Problem(path="", message=message)])
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(TuneloopError):
    """A recipe, campaign or command-line value is invalid."""


class RecipeError(ConfigError):
    """A recipe does not validate."""


class CampaignError(ConfigError):
    """A campaign file does not validate."""


class StorageError(TuneloopError):
    """A URI cannot be read or written."""


class CompatibilityError(ConfigError):
    """A stage cannot start from the checkpoint it was given.

    Subclasses carry the wording of the service error they prevent, so a user who searches for
    the text they would have seen after an hour of provisioning finds the same advice here.
    """

    service_message: str = ""

    def __init__(self, path: str, detail: str, fix: str, *, source: str = "") -> None:
        message = f"{self.service_message}: {detail}" if self.service_message else detail
        super().__init__([Problem(path=path, message=message, fix=fix, source=source)])


class IncompatibleTechniqueError(CompatibilityError):
    service_message = "Incompatible model training technique detected"


class ModelTypeMismatchError(CompatibilityError):
    service_message = (
        "Base model of job extracted from model_name_or_path does not match model_type"
    )


class ModelConfigNotFoundError(CompatibilityError):
    service_message = "Model config not found"


class PlatformMismatchError(CompatibilityError):
    service_message = "Platform mismatch"


class DataLocationError(CompatibilityError):
    service_message = "Datasets must live in a customer-owned bucket"


class RewardFunctionError(CompatibilityError):
    service_message = "Reward function is not usable"
