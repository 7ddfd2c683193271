"""Sizes and durations as people write them (``512MiB``, ``15m``): for settings, recipes and the CLI."""

from __future__ import annotations

import re

from modelfab.errors import ConfigError

__all__ = ["parse_bytes", "parse_duration"]

_BYTES = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_bytes(text: str | int) -> int:
    """``512MiB``, ``2GB``, ``1048576`` → bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _BYTES:
        raise ConfigError(f"cannot read {text!r} as a size: write e.g. 512MiB, 2GiB or 1000000")
    return int(float(m.group(1)) * _BYTES[unit])


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``0s``, ``90s``, ``15m``, ``2h``, ``1d``."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration such as 0s, 90s, 15m, 2h or 1d")
    return float(m.group(1)) * _SECONDS[m.group(2)]
