"""The closed loop, shown on a running server: some sites' customers change, the loop notices and recovers.

Traffic goes through the server's real OIP v2 REST endpoint and outcomes through ``POST /v2/feedback``,
exactly as a client would send them; the loop passes run in this process against the same workspace.
Rows come from :func:`modelfab.demo.synth.churn_frame` with the generator's parameters of the workspace's
data, so stable sites' customers behave as they did in training and shifted sites' customers do not.
Numeric inputs travel as binary tensors (OIP's binary extension) because JSON has no NaN and the data has
missing values.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from modelfab.errors import InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

    from modelfab.iterate.decisions import DecisionRecord
    from modelfab.recipe import Recipe
    from modelfab.store import Workspace

__all__ = ["LoopDemoReport", "format_decision", "loop_demo", "pick_sites", "run_loop_demo"]

FINAL = ("promote", "rollback", "reject")
FEEDBACK_CHUNK = 5000


@dataclass
class LoopDemoReport:
    """What the demo measured. ``failed`` counts every infer or feedback request that did not succeed."""

    shifted: list[str]
    stable: list[str]
    timelines: dict[str, list[DecisionRecord]] = field(default_factory=dict)
    champions_before: dict[str, int] = field(default_factory=dict)
    champions_after: dict[str, int] = field(default_factory=dict)
    served: dict[tuple[str, int], int] = field(default_factory=dict)  # rows answered per (model, version)
    answered_after: dict[str, dict[int, int]] = field(default_factory=dict)  # last round, rows per version
    requests: int = 0
    rows: int = 0
    outcomes: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    passes: int = 0
    seconds: float = 0.0

    def outcome(self, name: str) -> str | None:
        """The shifted model's final step (promote, rollback or reject), or None if it never got there."""
        actions = [r.action for r in self.timelines.get(name, [])]
        return next((a for a in reversed(actions) if a in FINAL), None)

    def touched(self, name: str) -> bool:
        """Whether the loop did anything but watch a stable model."""
        return any(r.action != "hold" for r in self.timelines.get(name, [])) or (
            self.champions_after.get(name) != self.champions_before.get(name)
        )

    def lines(self) -> list[str]:
        out: list[str] = []
        for name in self.shifted:
            before, after = self.champions_before[name], self.champions_after.get(name)
            out.append(f"{name} (customers' behaviour shifted): champion v{before} -> v{after}")
            out += [f"  {format_decision(r)}" for r in self.timelines.get(name, [])]
            if self.outcome(name) is None:
                out.append(f"  no final decision after {self.passes} loop passes")
            answered = self.answered_after.get(name)
            if answered:
                by = ", ".join(f"{n} by v{v}" for v, n in sorted(answered.items()))
                out.append(f"  afterwards, rows answered: {by}")
        kept = [n for n in self.stable if not self.touched(n)]
        moved = [n for n in self.stable if self.touched(n)]
        watched = sum(self.served.get((n, self.champions_before[n]), 0) for n in self.stable)
        if kept:
            out.append(
                f"stable sites left alone ({len(kept)}): {', '.join(kept)} "
                f"({watched:,} predictions watched, champions unchanged)"
            )
        for name in moved:
            last = self.timelines[name][-1] if self.timelines.get(name) else None
            out.append(f"stable site {name} was acted on: {format_decision(last) if last else 'alias moved'}")
        out.append(
            f"{self.requests:,} requests ({self.rows:,} rows scored, {self.outcomes:,} outcomes fed back) "
            f"through the server in {self.seconds:.1f}s, {self.passes} loop passes"
        )
        out.append(f"{self.failed} failed requests during the rollout")
        out += [f"  error: {e}" for e in self.errors[:3]]
        return out


def format_decision(r: DecisionRecord) -> str:
    """One history line, as ``modelfab history`` prints it."""
    version = r.version if r.version is not None else "-"
    return f"{r.time:%H:%M:%S}  {r.action:<8} v{version:<3} {r.actor:<5} {r.reason}"


class _Site:
    """A site's customers in a shuffled order, dealt out without repeats until all were used once."""

    def __init__(self, frame: pd.DataFrame, rng: np.random.Generator) -> None:
        self.frame = frame.reset_index(drop=True)
        self.rng = rng
        self.order = rng.permutation(len(self.frame))
        self.at = 0

    def take(self, n: int) -> pd.DataFrame:
        picks = []
        while n > 0:
            if self.at == len(self.order):
                self.order, self.at = self.rng.permutation(len(self.frame)), 0
            k = min(n, len(self.order) - self.at)
            picks.append(self.order[self.at : self.at + k])
            self.at += k
            n -= k
        return self.frame.iloc[np.concatenate(picks)]


class _Client:
    """OIP v2 REST over one keep-alive connection pool; counts what failed instead of raising."""

    def __init__(self, url: str, concurrency: int) -> None:
        import httpx

        self.base = "http://" + url.removeprefix("http://").rstrip("/")
        self.http = httpx.Client(
            base_url=self.base,
            timeout=30.0,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self.lock = threading.Lock()
        self.requests = 0
        self.failed = 0
        self.errors: list[str] = []

    def _fail(self, what: str) -> None:
        with self.lock:
            self.failed += 1
            if len(self.errors) < 10:
                self.errors.append(what)

    def inputs(self, model: str) -> list[dict[str, Any]]:
        resp = self.http.get(f"/v2/models/{model}")
        resp.raise_for_status()
        specs: list[dict[str, Any]] = resp.json()["inputs"]
        return specs

    def infer(
        self, model: str, specs: list[dict[str, Any]], rows: pd.DataFrame, key: str
    ) -> tuple[str, int] | None:
        """(prediction id, version that answered), or None when the request failed."""
        head: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for spec in specs:
            col = rows[spec["name"]]
            entry: dict[str, Any] = {
                "name": spec["name"],
                "datatype": spec["datatype"],
                "shape": [len(rows), 1],
            }
            if spec["datatype"] == "BYTES":
                entry["data"] = col.fillna("").astype(str).tolist()
            else:
                raw = col.to_numpy(dtype=np.float32, na_value=np.nan).astype("<f4").tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            head.append(entry)
        header = orjson.dumps({"inputs": head})
        with self.lock:
            self.requests += 1
        try:
            resp = self.http.post(
                f"/v2/models/{model}/infer",
                content=header + b"".join(blobs),
                headers={
                    "Inference-Header-Content-Length": str(len(header)),
                    "Content-Type": "application/octet-stream",
                    "X-Request-Key": key,
                },
            )
        except Exception as exc:  # connection resets, timeouts: all count as failed requests
            self._fail(f"{model}: {exc.__class__.__name__}: {exc}")
            return None
        if resp.status_code != 200:
            self._fail(f"{model}: HTTP {resp.status_code}: {resp.text[:200]}")
            return None
        doc = orjson.loads(resp.content)
        return str(doc["parameters"]["prediction_id"]), int(doc["model_version"])

    def feedback(self, items: list[dict[str, Any]]) -> int:
        accepted = 0
        for start in range(0, len(items), FEEDBACK_CHUNK):
            part = items[start : start + FEEDBACK_CHUNK]
            with self.lock:
                self.requests += 1
            try:
                resp = self.http.post("/v2/feedback", content=orjson.dumps({"items": part}))
            except Exception as exc:
                self._fail(f"feedback: {exc.__class__.__name__}: {exc}")
                continue
            if resp.status_code != 200:
                self._fail(f"feedback: HTTP {resp.status_code}: {resp.text[:200]}")
                continue
            doc = resp.json()
            if doc["unknown"]:
                self._fail(f"feedback: {len(doc['unknown'])} prediction id(s) unknown to the server")
            accepted += int(doc["accepted"])
        return accepted

    def close(self) -> None:
        self.http.close()


class _Traffic:
    """Sends rounds of labelled traffic: requests of ``batch`` rows, then the outcomes of all of them."""

    def __init__(self, client: _Client, sites: dict[str, _Site], target: str, batch: int, threads: int):
        self.client = client
        self.sites = sites
        self.target = target
        self.batch = batch
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="modelfab-demo")
        self.specs: dict[str, list[dict[str, Any]]] = {}
        self.keys = itertools.count()
        self.rows = 0
        self.outcomes = 0
        self.served: dict[tuple[str, int], int] = {}

    def round(self, plan: dict[str, int]) -> dict[str, dict[int, int]]:
        """Send ``plan[model]`` rows to each model; returns rows answered per model and version."""
        jobs = []
        for model, n in plan.items():
            if model not in self.specs:
                self.specs[model] = self.client.inputs(model)
            rows = self.sites[model].take(n)
            for start in range(0, n, self.batch):
                jobs.append((model, rows.iloc[start : start + self.batch], f"demo-{next(self.keys)}"))

        def one(job: tuple[str, pd.DataFrame, str]) -> tuple[str, pd.DataFrame, tuple[str, int] | None]:
            model, rows, key = job
            return model, rows, self.client.infer(model, self.specs[model], rows, key)

        answered: dict[str, dict[int, int]] = {}
        items: list[dict[str, Any]] = []
        for model, rows, got in self.pool.map(one, jobs):
            if got is None:
                continue
            pid, version = got
            per = answered.setdefault(model, {})
            per[version] = per.get(version, 0) + len(rows)
            self.served[(model, version)] = self.served.get((model, version), 0) + len(rows)
            self.rows += len(rows)
            items += [{"id": pid, "row": i, "outcome": int(y)} for i, y in enumerate(rows[self.target])]
        self.outcomes += self.client.feedback(items)
        return answered

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def pick_sites(ws: Workspace, recipe: Recipe, shift: int, stable: int) -> tuple[list[str], list[str]]:
    """Champions for a demo: (to shift, to keep stable), spread over the sites.

    Models the loop already acted on are left out (a site promoted by an earlier demo has learned its
    shift), and a site to shift must have no logged traffic yet: old-behaviour rows in its window would
    blur the change the demo shows. Fewer are returned when there are not enough.
    """
    import sqlalchemy as sa

    from modelfab.iterate.decisions import DecisionLog
    from modelfab.store import schema as t
    from modelfab.traffic.index import PredictionIndex

    champions = sorted(
        v.name for v in ws.registry.list_versions(recipe=recipe.name, limit=10**6) if "champion" in v.aliases
    )
    acted = DecisionLog(ws.registry).latest(champions)
    fresh = [n for n in champions if n not in acted]
    PredictionIndex.for_settings(ws.engine, ws.settings).sync()
    p = t.prediction_rows
    with ws.engine.connect() as conn:
        seen = set(
            conn.execute(sa.select(p.c.model).where(p.c.tenant == ws.registry.tenant).distinct()).scalars()
        )
    quiet = [n for n in fresh if n not in seen]
    n_shift = min(shift, len(quiet), max(1, len(fresh) - 1))
    shifted = quiet[:: max(1, len(quiet) // n_shift)][:n_shift] if n_shift else []
    kept = [n for n in fresh if n not in shifted][:stable]
    return shifted, kept


def loop_demo(
    ws: Workspace,
    server_url: str,
    recipe: Recipe,
    sites_to_shift: Sequence[str],
    *,
    stable_sites: int | Sequence[str] = 5,
    seed: int = 0,
    sites: int = 200,
    rows_per_site: int = 2000,
    shift: float = -3.0,
    recipe_file: str = "<demo>",
    workers: int | None = None,
    batch: int = 10,
    concurrency: int = 4,
    max_passes: int = 12,
    say: Callable[[str], None] | None = None,
) -> LoopDemoReport:
    """Run the demo and return what it measured (see :func:`run_loop_demo`)."""
    from modelfab.demo.synth import churn_frame
    from modelfab.iterate.decisions import DecisionLog
    from modelfab.iterate.loop import IterationLoop
    from modelfab.iterate.retrain import JUDGE_SHARE
    from modelfab.traffic.routing import REFRESH_S

    spec = recipe.iterate
    if spec is None or recipe.partition_by is None:
        raise InvalidInputError(
            f"recipe {recipe.name} needs partition_by and an iterate: section for the demo"
        )
    say = say or (lambda _line: None)
    started = time.monotonic()
    prefix = f"{recipe.name}."
    champions = {
        v.name: v.version
        for v in ws.registry.list_versions(recipe=recipe.name, limit=10**6)
        if "champion" in v.aliases
    }
    shifted = [s if s.startswith(prefix) else prefix + s for s in sites_to_shift]
    if isinstance(stable_sites, int):
        stable = [n for n in sorted(champions) if n not in shifted][:stable_sites]
    else:
        stable = [s if s.startswith(prefix) else prefix + s for s in stable_sites]
    models = shifted + stable
    missing = [n for n in models if n not in champions]
    if missing:
        raise InvalidInputError(
            f"{', '.join(missing)}: no champion to send traffic to; produce the models first"
        )
    if not shifted or any(not re.fullmatch(r".*-\d+", n) for n in models):
        raise InvalidInputError(
            "give sites generated by churn_frame (site-000, site-001, ...), at least one to shift"
        )
    index = {n: int(n.rsplit("-", 1)[-1]) for n in models}
    frame = churn_frame(
        sites=max(index.values()) + 1,
        rows_per_site=rows_per_site,
        seed=seed,
        tiny_sites=0,
        shift={n.removeprefix(prefix): shift for n in shifted},
    )
    rng = np.random.default_rng(seed + 1)
    parts = {str(k): g for k, g in frame.groupby(recipe.partition_by)}
    site_rows = {n: _Site(parts[n.removeprefix(prefix)], rng) for n in models}

    report = LoopDemoReport(shifted, stable, champions_before={n: champions[n] for n in models})
    client = _Client(server_url, concurrency)
    traffic = _Traffic(client, site_rows, recipe.target, batch, concurrency)
    loop = IterationLoop(ws, [(recipe, recipe_file)], workers=workers)
    log = DecisionLog(ws.registry)
    # Enough labelled rows for a judgement (min_samples), and for the gate's held-back share of them.
    warm = math.ceil(spec.min_samples / JUDGE_SHARE * 1.2)
    # Stable sites get more: the online metric of a few hundred rows is noisy enough to look like a drop.
    steady = min(spec.window, max(math.ceil(spec.min_samples * 1.25), 1000))
    canary = math.ceil(spec.canary.min_labels / spec.canary.share * 0.6)
    try:
        say(
            f"sending {warm} rows to each of {len(shifted)} shifted sites and {steady} to each of "
            f"{len(stable)} stable sites, with their outcomes"
        )
        traffic.round({**dict.fromkeys(shifted, warm), **dict.fromkeys(stable, steady)})
        trial_seen = False
        while report.passes < max_passes:
            result = loop.run_once()
            report.passes += 1
            for model, action, _ in result.actions:
                say(f"loop pass {report.passes}: {model}: {action}")
            done = log.latest(shifted, FINAL)
            if all(n in done for n in shifted):
                break
            if not trial_seen and log.deployments():
                trial_seen = True
                time.sleep(2 * REFRESH_S)  # every server worker's router sees a new trial within this
            trials = log.deployments()
            plan = {n: (canary if n in trials else warm // 3) for n in shifted if n not in done}
            traffic.round({**plan, **dict.fromkeys(stable, 5 * batch)})
        # The champion alias moved: give the server a moment to see it, then show who answers now.
        time.sleep(4 * REFRESH_S)
        report.answered_after = traffic.round(dict.fromkeys(shifted, 5 * batch))
    finally:
        traffic.close()
        client.close()
    report.timelines = {n: log.history(n) for n in models}
    report.champions_after = {n: ws.registry.resolve(n) for n in models}
    report.served = dict(traffic.served)
    report.requests, report.failed, report.errors = client.requests, client.failed, list(client.errors)
    report.rows, report.outcomes = traffic.rows, traffic.outcomes
    report.seconds = time.monotonic() - started
    return report


def run_loop_demo(
    ws: Workspace,
    server_url: str,
    recipe: Recipe,
    sites_to_shift: Sequence[str],
    *,
    stable_sites: int | Sequence[str] = 5,
    seed: int = 0,
    **options: Any,
) -> list[str]:
    """Shift the behaviour of ``sites_to_shift``'s customers and drive the loop through the running server
    at ``server_url`` (``host:port``) until those sites are retrained, canaried and promoted (or the
    challenger is rejected or rolled back); a few stable sites get the same treatment minus the shift.

    ``seed``, ``sites`` and ``rows_per_site`` must be those the workspace's data was generated with.
    Returns printable lines: each shifted site's timeline, what happened to the stable sites, and the
    count of failed requests. Further options: see :func:`loop_demo`.
    """
    return loop_demo(
        ws, server_url, recipe, sites_to_shift, stable_sites=stable_sites, seed=seed, **options
    ).lines()
