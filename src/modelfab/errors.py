"""The modelfab error tree.

Every error modelfab raises on purpose derives from :class:`ModelfabError` and knows the HTTP status a
server answers with, so one handler turns any of them into the Open Inference Protocol error shape
``{"error": "..."}``::

    ModelfabError (500)
    ├── ConfigError (400)            bad settings or environment
    ├── RecipeError (400)            a recipe file is invalid: names file, line, field, what is allowed
    ├── DataError (400)              a data file or dataset cannot be used
    ├── NotFoundError (404)          unknown model, version, alias, dataset or run
    ├── ConflictError (409)          a write raced another writer and lost
    ├── IntegrityError (500)         stored bytes do not match their digest
    ├── EncryptionError (500)        missing or wrong key for encrypted data
    ├── InvalidInputError (400)      an inference request does not match the model
    ├── PayloadTooLargeError (413)
    ├── OverloadedError (429)        a queue is full; retry later
    ├── UnavailableError (503)       a model cannot be served right now
    └── TrainingError (422)          a partition cannot be trained (too few rows, one class, ...)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictError",
    "DataError",
    "EncryptionError",
    "IntegrityError",
    "InvalidInputError",
    "ModelfabError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RecipeError",
    "TrainingError",
    "UnavailableError",
]


class ModelfabError(Exception):
    """Base of every error modelfab raises on purpose."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ModelfabError):
    status_code = 400


class RecipeError(ModelfabError):
    """A recipe is invalid. The message names the file, line, field and what is allowed."""

    status_code = 400

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        super().__init__(where + message)
        self.file = file
        self.line = line


class DataError(ModelfabError):
    status_code = 400


class NotFoundError(ModelfabError):
    status_code = 404


class ConflictError(ModelfabError):
    status_code = 409


class IntegrityError(ModelfabError):
    status_code = 500


class EncryptionError(ModelfabError):
    status_code = 500


class InvalidInputError(ModelfabError):
    status_code = 400


class PayloadTooLargeError(ModelfabError):
    status_code = 413


class OverloadedError(ModelfabError):
    status_code = 429

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnavailableError(ModelfabError):
    status_code = 503


class TrainingError(ModelfabError):
    status_code = 422
