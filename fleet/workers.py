"""`fleet run --workers N`: the fleet spread over N processes, one event loop each.

Worker w runs the devices of its shard with (index // shard count) % N == w, so the union of the
workers is exactly the single-process fleet. Each worker sends its live totals and its report so
far twice a second, and its report at the end, through one queue; the parent sums the totals and
the reports so far into its own `Live` (for the progress display and the metrics endpoint) and
merges the final reports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import queue
import signal
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

from fleet.credentials import Credentials
from fleet.errors import FleetError
from fleet.report import Report, merge_reports
from fleet.schema import FleetConfig
from fleet.simulator import Live, Shard, Target, make_target, simulate

__all__ = ["simulate_in_workers"]

_TICK = 0.5


def _worker_main(
    config: FleetConfig,
    url: str,
    credentials: Credentials,
    duration: float | None,
    shard: Shard,
    results: multiprocessing.Queue[tuple[str, int, Any]],
    stop: ProcessEvent,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    report = asyncio.run(_worker(config, url, credentials, duration, shard, results, stop))
    results.put(("report", shard.worker, report.to_json()))


async def _worker(
    config: FleetConfig,
    url: str,
    credentials: Credentials,
    duration: float | None,
    shard: Shard,
    results: multiprocessing.Queue[tuple[str, int, Any]],
    stop: ProcessEvent,
) -> Report:
    target = make_target(config, url, credentials)
    assert target is not None
    live = Live()
    stopped = asyncio.Event()

    async def report_live() -> None:
        while not stopped.is_set():
            results.put(("live", shard.worker, _snapshot(live)))
            if stop.is_set():
                stopped.set()
            await asyncio.sleep(_TICK)

    async with asyncio.TaskGroup() as tasks:
        ticker = tasks.create_task(report_live(), name="fleet.worker.live")
        try:
            return await simulate(config, target, duration=duration, stop=stopped, shard=shard, live=live)
        finally:
            ticker.cancel()


async def simulate_in_workers(
    config: FleetConfig,
    target: Target,
    *,
    workers: int,
    duration: float | None,
    stop: asyncio.Event,
    shard: Shard,
    live: Live,
) -> Report:
    """Run the fleet in `workers` processes until `duration` passes or `stop` is set."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[str, int, Any]] = context.Queue()
    stop_workers = context.Event()
    processes = [
        context.Process(
            target=_worker_main,
            args=(
                config,
                str(target.endpoint),
                target.credentials,
                duration,
                dataclasses.replace(shard, worker=worker, workers=workers),
                results,
                stop_workers,
            ),
            name=f"fleet-worker-{worker}",
            daemon=True,
        )
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    loop = asyncio.get_running_loop()
    snapshots: dict[int, dict[str, Any]] = {}
    reports: dict[int, Report] = {}
    try:
        while len(reports) < workers:
            if stop.is_set():
                stop_workers.set()
            try:
                kind, worker, data = await loop.run_in_executor(None, results.get, True, _TICK)
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise FleetError(f"{dead[0].name} died with exit code {dead[0].exitcode}") from None
                continue
            if kind == "live":
                snapshots[worker] = data
                _sum(live, snapshots.values())
            else:
                reports[worker] = Report.from_json(data)
    finally:
        stop_workers.set()
        for process in processes:
            await loop.run_in_executor(None, process.join, 10)
            if process.is_alive():
                process.kill()
    merged = merge_reports(reports[worker] for worker in sorted(reports))
    merged.meta = {
        "workers": workers,
        "config": config.fingerprint,
        "shard": f"{shard.number}/{shard.count}",
        "seed": config.seed,
        "complete": all(report.meta.get("complete", True) for report in reports.values()),
    }
    return merged


def _snapshot(live: Live) -> dict[str, Any]:
    """`live` as plain data for the queue: its totals, online devices by group and report so far."""
    data = {field.name: getattr(live, field.name) for field in dataclasses.fields(Live)}
    data["online"] = dict(live.online)
    data["report"] = None if live.report is None else live.report.to_json()
    return data


def _sum(live: Live, snapshots: Any) -> None:
    report = Report()
    totals = Live(report=report)
    for snapshot in snapshots:
        totals.target += snapshot["target"]
        totals.connected += snapshot["connected"]
        totals.published += snapshot["published"]
        totals.reconnects += snapshot["reconnects"]
        totals.errors += snapshot["errors"]
        totals.last_error = snapshot["last_error"] or totals.last_error
        totals.ever_connected = totals.ever_connected or snapshot["ever_connected"]
        totals.online.update(snapshot["online"])
        if snapshot["report"] is not None:
            report.merge(Report.from_json(snapshot["report"]))
    for field in dataclasses.fields(Live):
        setattr(live, field.name, getattr(totals, field.name))
