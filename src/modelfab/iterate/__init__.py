"""The iteration loop: watching (metrics and drift), policies, retraining, trials, decisions.

It reads predictions and outcomes from :mod:`modelfab.traffic` and never imports the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfab._lazy import lazy_exports

if TYPE_CHECKING:
    from modelfab.iterate.decisions import DecisionLog
    from modelfab.iterate.loop import IterationLoop

__all__ = ["DecisionLog", "IterationLoop"]

_WHERE = {
    "DecisionLog": "modelfab.iterate.decisions",
    "IterationLoop": "modelfab.iterate.loop",
}


__getattr__ = lazy_exports("modelfab.iterate", _WHERE)
