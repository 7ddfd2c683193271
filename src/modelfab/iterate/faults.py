"""One model's failure kept to that model: recorded in its history as an ``error`` decision (a message safe to
show: no traceback, credentials masked), then the model sits out 1, 2, 4 ... passes while the others carry on.

Batched work (watching many models, one production run for all retrains) that fails is split in halves until
the failing models are found, so one bad partition costs the others a retry, not their pass.

The back-off lives in the loop process: a restarted loop (perhaps restarted because someone fixed the
cause) tries every model again at once.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from modelfab.iterate.decisions import DecisionLog, Superseded
from modelfab.iterate.policy import backoff_passes

__all__ = ["Backoff", "Faults", "describe"]

log = logging.getLogger("modelfab.iterate")
T = TypeVar("T")
R = TypeVar("R")
Actions = list[tuple[str, str, str]]  # (model, action, reason), as a pass reports them

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


class Faults:
    """The loop's guard around each model's steps."""

    def __init__(self, decisions: DecisionLog, cap: int = 32) -> None:
        self.decisions = decisions
        self.backoff = Backoff(cap)
        self._failed_now: set[str] = set()

    def next_pass(self) -> None:
        self.backoff.next_pass()
        self._failed_now = set()

    def waiting(self, name: str) -> bool:
        return self.backoff.waiting(name)

    def settle(self, names: list[str]) -> None:
        """The pass went through ``names``: those that did not fail in it start afresh."""
        for name in names:
            if name not in self._failed_now:
                self.backoff.succeeded(name)

    @contextmanager
    def guard(self, name: str, step: str, actions: Actions) -> Iterator[None]:
        """Keeps a failure of ``step`` for one model to that model."""
        try:
            yield
        except Superseded as exc:
            # A person's promote or rollback changed the model since this pass read it: not a failure;
            # the next pass decides from the new state.
            log.info("%s: %s skipped: %s", name, step, exc)
        except Exception as exc:
            self.failed(name, step, exc, actions)

    def isolated(
        self,
        items: list[T],
        name_of: Callable[[T], str],
        run: Callable[[list[T]], R],
        step: str,
        actions: Actions,
    ) -> list[tuple[list[T], R]]:
        """``run`` over all ``items`` at once; when that fails, over each half in turn, down to the single
        items that fail, which are recorded as failed. Returns each batch that ran with its result."""
        if not items:
            return []
        try:
            return [(items, run(items))]
        except Exception as exc:
            if len(items) == 1:
                self.failed(name_of(items[0]), step, exc, actions)
                return []
            log.info("%s of %d models failed together (%s); trying halves", step, len(items), describe(exc))
        half = len(items) // 2
        return self.isolated(items[:half], name_of, run, step, actions) + self.isolated(
            items[half:], name_of, run, step, actions
        )

    def failed(self, name: str, step: str, exc: Exception, actions: Actions) -> None:
        self._failed_now.add(name)
        failures, wait = self.backoff.failed(name)
        reason = (
            f"{step} failed: {describe(exc)}; retrying after {wait} pass{'' if wait == 1 else 'es'} "
            f"(failure {failures} in a row)"
        )
        log.warning("%s: %s", name, reason)
        # Frames only: the exception's message may carry what describe() masks.
        log.debug("%s: %s failed at\n%s", name, step, "".join(traceback.format_tb(exc.__traceback__)))
        actions.append((name, "error", reason))
        evidence = {
            "step": step,
            "error": type(exc).__name__,
            "failures": failures,
            "retry_after_passes": wait,
        }
        try:
            self.decisions.record(name, "error", reason, evidence=evidence)
        except Exception as again:  # the database itself may be what failed; the pass still goes on
            log.warning("%s: could not record the failure: %s", name, describe(again))
