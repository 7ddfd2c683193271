"""Why a job made no model, and which of those reasons a re-run can fix.

A data reason (too few rows, one class, the target missing everywhere, an export that fails the parity
check) comes from :class:`~modelfab.errors.TrainingError` and is the partition's verdict: the same data
and seed give the same answer, so ``produce --retry-failed`` leaves it alone. Anything else (an exception
in the training code, a worker process that died, a store that could not be written) is a crash, recorded
with one of the prefixes below so a retry can find it among the stored reasons.
"""

from __future__ import annotations

import re
import traceback

from modelfab.errors import ModelfabError

__all__ = ["JOB_FAILED", "WORKER_FAILED", "job_crash_reason", "retryable", "worker_crash_reason"]

JOB_FAILED = "job failed: "
WORKER_FAILED = "worker failed: "

# How crashes inside a job were recorded before the prefix: the exception's type, message and where.
_UNPREFIXED_CRASH = re.compile(r"[A-Za-z_][\w.]*: .* \(at [^()]+:\d+\)", re.DOTALL)


def job_crash_reason(exc: BaseException) -> str:
    """The reason for an exception a job raised that is not a data reason."""
    if isinstance(exc, ModelfabError):
        return JOB_FAILED + exc.message
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{JOB_FAILED}{type(exc).__name__}: {exc}{where}"


def worker_crash_reason(exc: BaseException) -> str:
    """The reason for a job whose worker (process, Ray task) failed around it."""
    detail = exc.message if isinstance(exc, ModelfabError) else f"{type(exc).__name__}: {exc}"
    return WORKER_FAILED + detail


def retryable(reason: str | None) -> bool:
    """Whether a failed job's recorded reason is a crash (run it again) rather than a data reason."""
    if reason is None:
        return True  # failed without saying why: nothing says another try is pointless
    return reason.startswith((JOB_FAILED, WORKER_FAILED)) or _UNPREFIXED_CRASH.fullmatch(reason) is not None
