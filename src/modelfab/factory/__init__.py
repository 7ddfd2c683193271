"""The factory: recipes and datasets in, evaluated, gated, registered ONNX models out."""

from __future__ import annotations

from modelfab.factory.run import Progress, RunReport, produce

__all__ = ["Progress", "RunReport", "produce"]
