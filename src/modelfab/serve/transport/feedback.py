"""``POST /v2/feedback``: outcomes for the predictions the server answered, into :mod:`modelfab.traffic`.

The server mounts :func:`routes`. Each worker process opens its own database engine on first use (never
before a fork), and the blocking ingest runs on a few threads of its own, so the event loop keeps serving
inferences and a flood of feedback cannot take the threads that registry lookups and model loads use.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelfab.errors import InvalidInputError, ModelfabError, PayloadTooLargeError
from modelfab.serve.pools import run_in
from modelfab.traffic.feedback import FeedbackStore, parse_items

__all__ = ["MAX_BODY_BYTES", "routes"]

log = logging.getLogger("modelfab.iterate")
MAX_BODY_BYTES = 32 << 20
PUBLISH_EVERY_S = 0.5
PEER_WAIT_S = 1.5
# Ingest holds a database connection for a whole batch; more threads would only queue on the database.
INGEST_THREADS = 2


class _LazyStore:
    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self._store: FeedbackStore | None = None
        self._lock = threading.Lock()

    def get(self) -> FeedbackStore:
        with self._lock:
            if self._store is None:
                from modelfab.store.db import SMALL_POOL, create_engine, migrate
                from modelfab.traffic.index import PredictionIndex

                s = self._settings
                engine = create_engine(s.resolved_database_url, **SMALL_POOL)
                migrate(engine, lock_dir=Path(s.home))
                index = PredictionIndex.for_settings(engine, s)
                shared = engine.dialect.name != "sqlite"
                self._store = FeedbackStore(
                    engine, s.tenant, index, peer_wait_s=PEER_WAIT_S if shared else 0.0
                )
            return self._store


def _publish_forever(store: _LazyStore, stop: threading.Event) -> None:
    """Push this server's prediction log into the shared index every PUBLISH_EVERY_S, so feedback sent to
    any server sharing the database finds predictions this one made."""
    while not stop.wait(PUBLISH_EVERY_S):
        try:
            index = store.get().index
            if index is not None:
                index.sync()
        except Exception:  # the database may be briefly away; the next round catches up
            log.warning("publishing predictions to the shared index failed; retrying", exc_info=True)
            stop.wait(PUBLISH_EVERY_S * 4)


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
    ingest_pool = ThreadPoolExecutor(INGEST_THREADS, thread_name_prefix="modelfab-feedback")
    url = str(getattr(settings, "resolved_database_url", "sqlite"))
    if not url.startswith("sqlite"):
        # Several servers share this database: publish predictions continuously, not only on feedback.
        threading.Thread(
            target=_publish_forever, args=(store, threading.Event()), name="modelfab-publish", daemon=True
        ).start()

    async def feedback(request: Request) -> Response:
        # Errors are answered here in the OIP shape, so the route behaves the same wherever it is mounted.
        try:
            try:
                doc = orjson.loads(await _body(request))
            except orjson.JSONDecodeError as exc:
                raise InvalidInputError(f"feedback body is not valid JSON: {exc}") from None
            items = parse_items(doc)
            result = await run_in(ingest_pool, lambda: store.get().ingest(items))
        except ModelfabError as exc:
            return _json({"error": exc.message}, exc.status_code)
        return _json(result.to_json())

    return [Route("/v2/feedback", feedback, methods=["POST"])]
