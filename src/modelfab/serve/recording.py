"""What the server writes to the prediction log (:mod:`modelfab.traffic.predlog`): which requests are
sampled, and one record per answered row batch, written after the batch has run."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modelfab.serve.models.batching import Item
from modelfab.serve.types import Array
from modelfab.traffic.predlog import PredictionLog, encode_record

__all__ = ["LogContext", "Recorder"]


@dataclass(slots=True)  # not frozen: one is made per request, and frozen dataclasses are slower to make
class LogContext:
    """What the prediction log records about a request besides its tensors."""

    prediction_id: str
    model: str
    version: int
    time: float
    request_key: str | None = None
    shadow: bool = False


class Recorder:
    """One worker's prediction log writer, or a no-op when logging is off."""

    def __init__(
        self,
        home: Path | None,
        worker: str,
        *,
        enabled: bool,
        sample_rate: float,
        key: bytes | None = None,
    ) -> None:
        """``key``: the workspace's encryption key; each record is then sealed on its own."""
        self.log = PredictionLog(home, worker=worker, key=key) if home is not None and enabled else None
        self._rate = sample_rate

    def sampled(self) -> bool:
        if self.log is None:
            return False
        return self._rate >= 1.0 or random.random() < self._rate

    def write(self, items: Sequence[Item], results: Sequence[dict[str, Array]]) -> None:
        """The batcher's ``after_run``: one record per sampled request of the batch."""
        assert self.log is not None
        lines = []
        for item, outputs in zip(items, results, strict=True):
            ctx: LogContext | None = item.context
            if ctx is not None:
                record = {
                    "id": ctx.prediction_id,
                    "model": ctx.model,
                    "version": ctx.version,
                    "time": ctx.time,
                    "request_key": ctx.request_key,
                    "shadow": ctx.shadow,
                    "inputs": item.feeds,
                    "outputs": outputs,
                }
                lines.append(encode_record(record))
        if lines:
            self.log.write_lines(lines)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
