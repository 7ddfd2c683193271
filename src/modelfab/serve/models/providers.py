"""Which ONNX Runtime execution providers a model runs on: from what is installed, per model and per server.

A recipe's ``serving: {providers: [...]}`` names them for its models; ``modelfab serve --providers`` for every
model that names none; otherwise the default order applies: CUDA when installed, then CPU. TensorRT and
OpenVINO are used only when asked for: they compile an engine per model (TensorRT takes seconds to minutes),
and with lazy loading a load is on the request path, so that cost must be chosen, not met by surprise.

A provider asked for but not installed is left out, with one warning per model, and the model runs on what
remains: never an error, since the same recipe serves on a GPU node and on a laptop. CPU always comes last,
as ONNX Runtime's fallback for the nodes the others do not take.

Nothing here imports ONNX Runtime until :meth:`Providers.available` is first read, so recipes can check their
names without it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CPU",
    "CPU_ONLY",
    "DEFAULT_ORDER",
    "PROVIDER_ALIASES",
    "Choice",
    "Providers",
    "canonical_provider",
    "choose_providers",
    "parse_providers",
]

log = logging.getLogger("modelfab.serve")

CPU = "CPUExecutionProvider"
CPU_ONLY: tuple[str, ...] = (CPU,)
# Short names recipes and the CLI may use for the providers modelfab knows.
PROVIDER_ALIASES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": CPU,
}
DEFAULT_ORDER: tuple[str, ...] = ("CUDAExecutionProvider", CPU)
_SUFFIX = "ExecutionProvider"


def canonical_provider(name: str) -> str:
    """ONNX Runtime's name for ``name`` (``cuda`` -> ``CUDAExecutionProvider``); ValueError if unknown."""
    text = str(name).strip()
    alias = PROVIDER_ALIASES.get(text.lower())
    if alias is not None:
        return alias
    for full in PROVIDER_ALIASES.values():  # ONNX Runtime's names, whatever their case
        if text.lower() == full.lower():
            return full
    if text.endswith(_SUFFIX) and len(text) > len(_SUFFIX) and text.isalnum():
        return text  # another of ONNX Runtime's providers (ROCm, DirectML, CoreML, ...)
    known = ", ".join(PROVIDER_ALIASES)
    raise ValueError(
        f"unknown execution provider {name!r}; use {known} or an ONNX Runtime provider name such as "
        "CUDAExecutionProvider"
    )


def parse_providers(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical names in the order given, without repeats; ValueError naming the first unknown one."""
    out: list[str] = []
    for name in names:
        full = canonical_provider(name)
        if full not in out:
            out.append(full)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Choice:
    providers: tuple[str, ...]  # what to build the session with, in order; CPU last
    missing: tuple[str, ...]  # asked for but not installed


def choose_providers(requested: Sequence[str] | None, available: Collection[str]) -> Choice:
    """The providers for a session: ``requested`` (canonical names; None or empty: the default order) that
    are ``available``, then CPU."""
    wanted = tuple(requested) if requested else DEFAULT_ORDER
    chosen = [p for p in wanted if p in available and p != CPU]
    chosen.append(CPU)
    missing = tuple(p for p in wanted if p not in available and p != CPU) if requested else ()
    return Choice(tuple(chosen), missing)


class Providers:
    """The server's provider policy: what is installed, the server's default, one warning per model."""

    def __init__(self, default: Sequence[str] | None = None, available: Sequence[str] | None = None) -> None:
        """``default``: the server's ``--providers`` (names or aliases); ``available``: what is installed
        (None: ask ONNX Runtime on first use)."""
        self.default = parse_providers(default) if default else None
        self._available = tuple(available) if available is not None else None
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @property
    def available(self) -> tuple[str, ...]:
        if self._available is None:
            import onnxruntime as ort

            self._available = tuple(ort.get_available_providers())
        return self._available

    def for_model(self, name: str, serving: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The providers model ``name`` loads with, given its version's ``serving`` section."""
        requested: Sequence[str] | None = self.default
        asked = (serving or {}).get("providers")
        if asked:
            try:
                requested = parse_providers(asked)
            except ValueError as exc:  # checked when the recipe was read; a hand-made record may differ
                self._warn_once(name, f"model {name}: {exc}; using the server's providers")
        choice = choose_providers(requested, self.available)
        if choice.missing:
            self._warn_once(
                name,
                f"model {name} asks for {', '.join(choice.missing)}, which this ONNX Runtime does not have "
                f"(installed: {', '.join(self.available)}); it runs on {', '.join(choice.providers)}",
            )
        return choice.providers

    def settled(self, name: str, wanted: Sequence[str], got: Sequence[str]) -> None:
        """The session was built: warn (once per model) when ONNX Runtime fell back from what it was given,
        e.g. CUDA installed but no GPU or driver on this machine."""
        dropped = [p for p in wanted if p not in got]
        if dropped:
            self._warn_once(
                name,
                f"model {name}: ONNX Runtime could not start {', '.join(dropped)}; it runs on "
                f"{', '.join(got)}",
            )

    def _warn_once(self, name: str, message: str) -> None:
        with self._lock:
            if name in self._warned:
                return
            self._warned.add(name)
        log.warning("%s", message)
