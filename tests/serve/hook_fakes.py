"""Stand-ins for the server's plug-ins (routing, extra routes, extra metrics), passed as ServeOptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelfab.errors import InvalidInputError


@dataclass(frozen=True)
class FakeDecision:
    serve: int | str
    shadow: int | str | None = None


class FakeRouter:
    """Key ``canary-*`` answers with version 2; key ``shadow`` answers with the champion, shadowed by 2."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def route(self, model: str, request_key: str | None) -> FakeDecision:
        self.calls.append((model, request_key))
        if request_key is not None and request_key.startswith("canary"):
            return FakeDecision(2)
        if request_key == "shadow":
            return FakeDecision("champion", 2)
        return FakeDecision("champion")


ROUTERS: list[FakeRouter] = []


def make_router(settings: Any) -> FakeRouter:
    router = FakeRouter()
    ROUTERS.append(router)
    return router


def broken_router(settings: Any) -> FakeRouter:
    raise RuntimeError("no database here")


def routes(settings: Any) -> list[Route]:
    async def feedback(request: Request) -> Response:
        body = await request.body()
        if not body.startswith(b"{"):
            raise InvalidInputError("feedback body must be a JSON object")
        return Response(b'{"accepted": 1}', media_type="application/json")

    return [Route("/v2/feedback", feedback, methods=["POST"])]


def metrics(settings: Any) -> Any:
    return lambda: (
        '# TYPE modelfab_online_metric gauge\nmodelfab_online_metric{model="digits",version="1"} 0.5\n'
    )


def broken_metrics(settings: Any) -> Any:
    def fail() -> str:
        raise RuntimeError("database away")

    return fail
