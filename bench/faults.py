"""Fault benchmark (run by hand): a live ``modelfab serve`` under attack while well-behaved clients keep
sending infer requests and their outcomes.

    PYTHONPATH=src .venv/bin/python bench/faults.py [--quick] [--seconds 15] [--keep]

On a generated workspace (a few churn sites, one model each, produced once and cached in bench/out/faults)
it starts ``modelfab serve --workers 2`` on 127.0.0.1, measures a quiet run, then runs each attack for a
phase of the same length with the clients still going:

1. slowloris: many connections, each sending one more header byte every second;
2. 10,000 infer requests to random model names, pipelined on a few connections;
3. 1 GiB of pipelined 1 MiB infer requests on 4 connections, never reading a reply;
4. kill -9 of a server worker under load (the supervisor must replace it);
5. kill -9 of ``modelfab iterate`` while a challenger is on canary, then a restart: the loop must finish
   the trial, and the decision history must agree with the champion alias.

For each phase: requests (infer and feedback) answered 200 to the clients per second, as a share of the
mean of the quiet runs before and after the attacks (the lines printed while it runs compare with the first
one), their infer p99 latency, the errors they saw, the RSS growth of the server's process group, the growth
of /metrics series (sample lines), and feedback lost (outcomes acknowledged with a 200 but missing from the
registry; must be 0). Attacks run as separate processes
(bench/faults_attacks.py) so they do not take the clients' GIL; on a small machine they still share the
CPUs, which is part of what an attack does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "faults"
sys.path.insert(0, str(HERE))

from faults_clients import Clients, Tally, group_rss, metric_series, missing_feedback  # noqa: E402

SITES = 5
ROWS = 700
SEED = 3
SHIFTED = "churn.site-001"
RECIPE = """name: churn
task: classification
dataset: churn
target: churned
partition_by: site
features: [tenure, monthly_spend, support_calls, plan, contract]
split: {holdout: 0.25, seed: 7}
candidates:
  - family: logistic_regression
    params: {C: 1.0}
trials: 1
metric: roc_auc
gate: {min: 0.55}
iterate:
  triggers: {drift_psi: 0.5, metric_drop: 0.06}
  min_samples: 100
  window: 1200
  beat_champion_by: 0.01
  canary: {share: 0.5, min_labels: 60}
  cooldown: 0s
"""


@dataclass
class Result:
    name: str
    seconds: float
    tally: Tally
    rss_before: int
    rss_after: int
    series_before: int
    series_after: int
    lost: int
    notes: list[str] = field(default_factory=list)


class Processes:
    """Every subprocess the bench starts, each leading its own process group; all stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        out: Any = log.open("ab") if log is not None else subprocess.PIPE
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their parent

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


READ_TIMEOUT_S = 4.0


def template(sites: int, rows: int) -> Path:
    """A produced home (one champion per site), made once and reused."""
    from modelfab.data import import_dataset
    from modelfab.demo.synth import churn_frame
    from modelfab.factory import produce
    from modelfab.recipe import parse_recipe
    from modelfab.settings import Settings
    from modelfab.store import Workspace

    done = OUT / f"template-{sites}x{rows}"
    if (done / "churn.yaml").exists():
        return done
    building = Path(tempfile.mkdtemp(prefix="template-", dir=OUT))
    ws = Workspace.open(Settings(home=building))
    try:
        churn_frame(sites=sites, rows_per_site=rows, seed=SEED, tiny_sites=0).to_csv(
            building / "churn.csv", index=False
        )
        import_dataset(ws, "churn", building / "churn.csv")
        report = produce(ws, parse_recipe(RECIPE), workers=1)
        assert report.passed == sites, report.failures
    finally:
        ws.close()
    (building / "churn.yaml").write_text(RECIPE)
    building.rename(done)
    return done


def site_rows(sites: int, rows: int, shift: dict[str, float] | None = None) -> dict[str, Any]:
    """Customers per model name, without missing values (JSON has no NaN)."""
    from modelfab.demo.synth import churn_frame

    frame = churn_frame(sites=sites, rows_per_site=rows, seed=SEED, tiny_sites=0, shift=shift).dropna()
    return {f"churn.{site}": part.reset_index(drop=True) for site, part in frame.groupby("site")}


def workers_of(home: Path) -> dict[str, int]:
    try:
        doc = json.loads((home / "run" / "serve.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: int(v) for k, v in doc["workers"].items()}


def run_phase(
    name: str,
    seconds: float,
    clients: Clients,
    server_pid: int,
    url: str,
    home: Path,
    procs: Processes,
    attack: list[str] | None = None,
    during: Callable[[float], list[str]] | None = None,
    max_seconds: float | None = None,
) -> Result:
    """Clients run for ``seconds`` (longer while the attack is still running, up to ``max_seconds``);
    ``during(deadline)`` runs in the meantime and returns notes."""
    rss0, series0 = group_rss(server_pid), metric_series(url)
    started = time.monotonic()
    clients.start()
    notes: list[str] = []
    proc = None
    try:
        if attack is not None:
            proc = procs.start([sys.executable, str(HERE / "faults_attacks.py"), *attack])
        if during is not None:
            notes += during(started + seconds)
        bound = started + (max_seconds or seconds)
        while time.monotonic() < started + seconds or (
            proc is not None and proc.poll() is None and time.monotonic() < bound
        ):
            time.sleep(0.1)
        if proc is not None:
            try:
                out, _ = proc.communicate(timeout=20)
                lines = out.decode().strip().splitlines()
                notes.append(lines[-1] if lines else f"attack exited {proc.returncode}")
            except subprocess.TimeoutExpired:
                procs.stop(proc, signal.SIGKILL)
                notes.append("attack did not finish in time; killed")
    finally:
        tally = clients.stop()
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    result = Result(
        name,
        elapsed,
        tally,
        rss0,
        group_rss(server_pid),
        series0,
        metric_series(url),
        missing_feedback(home, tally.acked),
        notes,
    )
    return result


def kill_worker(home: Path) -> Callable[[float], list[str]]:
    def during(deadline: float) -> list[str]:
        start = time.monotonic()
        time.sleep(max(0.0, (deadline - start) / 3))
        before = workers_of(home)
        if "0" not in before:
            return ["no worker 0 in run/serve.json"]
        victim = before["0"]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() < killed + 30:
            now = workers_of(home).get("0")
            if now is not None and now != victim:
                return [
                    f"worker 0 pid {victim} killed; replaced by pid {now} in {time.monotonic() - killed:.2f}s"
                ]
            time.sleep(0.05)
        return [f"worker 0 pid {victim} killed; NOT replaced within 30s"]

    return during


def kill_loop(home: Path, procs: Processes, bound: float) -> Callable[[float], list[str]]:
    """Start ``modelfab iterate``, SIGKILL it (its whole group) while a canary is live, restart it, and wait
    for the trial to end; then check the history against the aliases."""
    from modelfab.iterate.decisions import DecisionLog
    from modelfab.settings import Settings
    from modelfab.store import Workspace

    args = [
        sys.executable,
        "-m",
        "modelfab.cli.main",
        "iterate",
        "--recipe",
        str(home / "churn.yaml"),
        "--interval",
        "0.5",
        "--workers",
        "1",
    ]
    env = {**os.environ, "MODELFAB_HOME": str(home)}

    def during(_deadline: float) -> list[str]:
        notes: list[str] = []
        ws = Workspace.open(Settings(home=home))
        log = DecisionLog(ws.registry)
        try:
            start, began = time.monotonic(), time.time()
            loop = procs.start(args, home / "iterate.log", env=env)
            state = "no canary"
            while time.monotonic() < start + bound:
                dep = log.deployments().get(SHIFTED)
                if dep is not None:
                    state = f"canary of v{dep.version} live"
                    break
                if loop.poll() is not None:
                    state = f"loop exited {loop.returncode} before a canary"
                    break
                time.sleep(0.2)
            steps = [r.action for r in log.history(SHIFTED)]
            procs.stop(loop, signal.SIGKILL)
            notes.append(f"loop killed -9 at {time.monotonic() - start:.1f}s ({state}; history {steps})")
            restart = time.monotonic()
            loop = procs.start(args, home / "iterate.log", env=env)
            final = None
            while time.monotonic() < restart + bound and loop.poll() is None:
                last = log.latest([SHIFTED], ["promote", "rollback", "reject"]).get(SHIFTED)
                if last is not None and last.time.timestamp() >= began:
                    final = last
                    break
                time.sleep(0.2)
            procs.stop(loop)
            took = time.monotonic() - restart
            if final is not None:
                notes.append(f"restarted loop: {final.action} v{final.version} after {took:.1f}s")
            else:
                notes.append(f"restarted loop: no final decision within {took:.1f}s (rc {loop.returncode})")
            notes.append(consistency(ws, log))
        finally:
            ws.close()
        return notes

    return during


def consistency(ws: Any, log: Any) -> str:
    """Does every model's history agree with its aliases? The champion alias must be the version the last
    promote/rollback named (or the produced one), a live deployment must follow a canary step, and no
    alias move may be missing from the alias history."""
    from modelfab.iterate.loop import STEPS

    problems = []
    names = sorted({v.name for v in ws.registry.list_versions(recipe="churn", limit=10**6)})
    deployments = log.deployments()
    for name in names:
        history = log.history(name)
        moved = [r for r in history if r.action in ("promote", "rollback")]
        champion = ws.registry.resolve(name)
        expected = moved[-1].champion if moved else 1
        if champion != expected:
            problems.append(f"{name}: champion v{champion}, history says v{expected}")
        aliases = ws.registry.alias_history(name, "champion")
        if aliases and aliases[-1].version != champion:
            problems.append(f"{name}: alias history ends at v{aliases[-1].version}, alias is v{champion}")
        steps = [r.action for r in history if r.action in STEPS]
        seen: set[tuple[str, int | None]] = set()
        for r in history:
            if r.action in STEPS and r.challenger is not None:
                if (r.action, r.challenger) in seen:
                    problems.append(f"{name}: {r.action} of v{r.challenger} recorded twice")
                seen.add((r.action, r.challenger))
        live = name in deployments
        if live != (bool(steps) and steps[-1] == "canary"):
            problems.append(f"{name}: deployment live={live} but last step {steps[-1:] or 'none'}")
    return "history and aliases agree" if not problems else "INCONSISTENT: " + "; ".join(problems)


def line(r: Result | None, quiet_rate: float | None) -> str:
    if r is None:
        return (
            f"{'phase':<14}{'secs':>6}{'ok/s':>8}{'vs quiet':>9}{'p99 ms':>8}  {'errors':<34}{'RSS MiB':>18}"
            f"{'series':>13}{'fb ok':>7}{'lost':>6}"
        )
    rate = r.tally.served / r.seconds if r.seconds else 0.0
    ratio = f"{rate / quiet_rate:.2f}" if quiet_rate else "-"
    errs = sum(r.tally.errors.values())
    kinds = ", ".join(f"{k} x{n}" for k, n in r.tally.errors.most_common(2))
    err = f"{errs}" + (f" ({kinds})" if kinds else "")
    before, after = r.rss_before / 2**20, r.rss_after / 2**20
    mib = f"{before:.0f}->{after:.0f} {after - before:+.0f}"
    series = f"{r.series_before}->{r.series_after}"
    return (
        f"{r.name:<14}{r.seconds:>6.1f}{rate:>8.1f}{ratio:>9}{r.tally.latency_ms(0.99):>8.0f}  "
        f"{err[:33]:<34}{mib:>18}"
        f"{series:>13}{len(r.tally.acked):>7}{r.lost:>6}"
    )


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="Short phases (about a minute in all).")
    ap.add_argument("--seconds", type=float, default=None, help="Seconds per phase (default 15, quick 6).")
    ap.add_argument("--slowloris", type=int, default=None, help="Slowloris connections (default 1000).")
    ap.add_argument("--keep", action="store_true", help="Keep the workspace (its logs) afterwards.")
    args = ap.parse_args()
    seconds = args.seconds or (6.0 if args.quick else 15.0)
    conns = args.slowloris or (300 if args.quick else 1000)
    loop_bound = 60.0 if args.quick else 120.0

    from modelfab.demo.server import ServerProcess, free_port, serve_args

    # Ctrl-C and SIGTERM both end in the finally below, which stops every subprocess.
    signal.signal(signal.SIGTERM, _interrupt)
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print(f"workspace: {SITES} sites x ~{ROWS} customers (produced once, cached in {OUT})", flush=True)
    base = template(SITES, ROWS)
    home = Path(tempfile.mkdtemp(prefix="run-", dir=OUT)) / "home"
    shutil.copytree(base, home)
    port = free_port()
    # A read timeout shorter than a phase, so that slowloris connections are seen being dropped; the
    # default (60 s, like nginx's client_header_timeout) would outlast a --quick phase.
    limits = ["--read-timeout", str(READ_TIMEOUT_S)]
    server = ServerProcess(
        home, [*serve_args(port, workers="2", grpc=False), *limits], port, home / "serve.log"
    )
    procs = Processes()
    results: list[Result] = []
    interrupted = False
    try:
        server.start(timeout=90)
        assert server.proc is not None
        pid, url = server.proc.pid, server.url
        rows = site_rows(SITES, ROWS)
        shifted = site_rows(SITES, ROWS, shift={SHIFTED.removeprefix("churn."): -3.0})[SHIFTED]
        clients = Clients(url, {k: v for k, v in rows.items() if k != SHIFTED})
        print(
            f"server on {url} (pid {pid}, workers {workers_of(home)}, read timeout {READ_TIMEOUT_S:g}s); "
            f"{seconds:g}s phases",
            flush=True,
        )
        # Warm-up (loads every model, opens the log segments): not measured.
        clients.start()
        time.sleep(2)
        clients.stop()
        print(line(None, None), flush=True)

        def phase(name: str, **kw: Any) -> Result:
            r = run_phase(name, seconds, clients, pid, url, home, procs, **kw)
            results.append(r)
            quiet = results[0].tally.served / results[0].seconds
            print(line(r, quiet), flush=True)
            for note in r.notes:
                print(f"  {note}", flush=True)
            return r

        p = ["--port", str(port), "--seconds"]
        phase("quiet")
        phase("slowloris", attack=["slowloris", *p, str(seconds), "--conns", str(conns)])
        phase("10k names", attack=["names", *p, str(3 * seconds)], max_seconds=3 * seconds)
        phase("1GiB pipeline", attack=["pipeline", *p, str(seconds)])
        phase("kill worker", during=kill_worker(home))
        clients.skew = (SHIFTED, shifted, 0.5)
        phase("kill loop", during=kill_loop(home, procs, loop_bound), max_seconds=2 * loop_bound)
        clients.skew = None
        phase("quiet after")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        procs.stop_all()
        code = server.stop()
        print(f"server stopped (exit {code}); log: {server.log_path}", flush=True)
    # The machine may be shared: the baseline is the mean of the quiet runs before and after the attacks.
    quiets = [r.tally.served / r.seconds for r in results if r.name.startswith("quiet")]
    quiet = sum(quiets) / len(quiets) if quiets else None
    print(
        f"\nfault bench: {SITES} models, 2 workers, {time.monotonic() - t0:.0f}s in all; 'vs quiet' is "
        f"against the mean of the quiet runs ({', '.join(f'{q:.0f}' for q in quiets)} ok/s)"
    )
    print(line(None, None))
    for r in results:
        print(line(r, quiet))
    print()
    for r in results:
        for note in r.notes:
            print(f"{r.name}: {note}")
        if sum(r.tally.errors.values()):
            print(f"{r.name}: errors {dict(r.tally.errors)}")
    lost = sum(r.lost for r in results)
    print(f"\nfeedback acknowledged: {sum(len(r.tally.acked) for r in results)}, lost: {lost}")
    if interrupted:
        print(f"interrupted: the table shows the phases that finished; workspace kept: {home}")
        sys.exit(130)
    if not args.keep:
        shutil.rmtree(home.parent, ignore_errors=True)
    else:
        print(f"workspace kept: {home}")


if __name__ == "__main__":
    main()
