"""One model's failure kept to that model: a message safe to record, and passes it sits out before retrying.

The back-off lives in the loop process: a restarted loop (perhaps restarted because someone fixed the
cause) tries every model again at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from modelfab.iterate.policy import backoff_passes

__all__ = ["Backoff", "describe"]

MAX_MESSAGE = 300
# URLs with credentials (database, object store) and key=value secrets, as drivers put them in messages.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s:@]*(:[^@\s/]*)?@")
_KEY_VALUE = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|encryption[_-]?key)\s*[=:]\s*\S+"
)


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, credentials masked, without traceback, SQL or parameters."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error with the statement and params
    cause = orig if isinstance(orig, BaseException) else exc
    lines = str(cause).strip().splitlines()
    text = lines[0] if lines else ""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}=***", text)
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    name = type(cause).__name__
    return f"{name}: {text}" if text else name


@dataclass
class Backoff:
    """Which models sit out which passes after failing: 1 pass after the first failure, then 2, 4 ...
    (capped); a success forgets the failures."""

    cap: int = 32
    passes: int = 0
    _failures: dict[str, int] = field(default_factory=dict)
    _retry_at: dict[str, int] = field(default_factory=dict)

    def next_pass(self) -> None:
        self.passes += 1

    def waiting(self, name: str) -> bool:
        return self.passes < self._retry_at.get(name, 0)

    def failed(self, name: str) -> tuple[int, int]:
        """Count a failure in this pass; returns (failures in a row, passes to sit out)."""
        n = self._failures.get(name, 0) + 1
        wait = backoff_passes(n, self.cap)
        self._failures[name] = n
        self._retry_at[name] = self.passes + wait + 1
        return n, wait

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)
        self._retry_at.pop(name, None)
