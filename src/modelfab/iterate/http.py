"""``POST /v2/feedback`` for the inference server: outcomes for the predictions it answered.

The server mounts :func:`routes`. Each worker process opens its own database engine on first use (never
before a fork), and the blocking ingest runs in a thread so the event loop keeps serving inferences.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelfab.errors import InvalidInputError, ModelfabError, PayloadTooLargeError
from modelfab.iterate.feedback import FeedbackStore, parse_items

__all__ = ["MAX_BODY_BYTES", "routes"]

MAX_BODY_BYTES = 32 << 20


class _LazyStore:
    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self._store: FeedbackStore | None = None
        self._lock = threading.Lock()

    def get(self) -> FeedbackStore:
        with self._lock:
            if self._store is None:
                from modelfab.iterate.predindex import PredictionIndex
                from modelfab.store.db import create_engine, migrate

                s = self._settings
                engine = create_engine(s.resolved_database_url)
                migrate(engine, lock_dir=Path(s.home))
                index = PredictionIndex(engine, Path(s.home), s.tenant)
                self._store = FeedbackStore(engine, s.tenant, index)
            return self._store


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"feedback body of {declared} bytes is over the {MAX_BODY_BYTES} limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLargeError(f"feedback body is over the {MAX_BODY_BYTES} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def routes(settings: Any) -> list[Route]:
    """The feedback route; ``settings`` is the server's :class:`modelfab.settings.Settings`."""
    store = _LazyStore(settings)

    async def feedback(request: Request) -> Response:
        # Errors are answered here in the OIP shape, so the route behaves the same wherever it is mounted.
        try:
            try:
                doc = orjson.loads(await _body(request))
            except orjson.JSONDecodeError as exc:
                raise InvalidInputError(f"feedback body is not valid JSON: {exc}") from None
            items = parse_items(doc)
            result = await asyncio.to_thread(lambda: store.get().ingest(items))
        except ModelfabError as exc:
            return _json({"error": exc.message}, exc.status_code)
        return _json(result.to_json())

    return [Route("/v2/feedback", feedback, methods=["POST"])]
