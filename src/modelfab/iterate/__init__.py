"""The iteration loop: feedback, watching (metrics and drift), policies, retraining, trials, decisions.

Heavy modules load only when used; the server imports :mod:`modelfab.iterate.http` and
:mod:`modelfab.iterate.routing` directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfab._lazy import lazy_exports

if TYPE_CHECKING:
    from modelfab.iterate.decisions import DecisionLog
    from modelfab.iterate.demo import run_loop_demo
    from modelfab.iterate.feedback import FeedbackStore
    from modelfab.iterate.loop import IterationLoop

__all__ = ["DecisionLog", "FeedbackStore", "IterationLoop", "run_loop_demo"]

_WHERE = {
    "DecisionLog": "modelfab.iterate.decisions",
    "FeedbackStore": "modelfab.iterate.feedback",
    "IterationLoop": "modelfab.iterate.loop",
    "run_loop_demo": "modelfab.iterate.demo",
}


__getattr__ = lazy_exports("modelfab.iterate", _WHERE)
