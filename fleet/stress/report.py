"""The stress report in three forms: a table for people (rich), JSON, and JUnit XML for CI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from fleet.stress.accounting import Account, GateResult
from fleet.stress.runner import StressResult

__all__ = ["mqtt5_rows", "stress_json", "stress_table", "write_json", "write_junit"]


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value * 1000:,.1f}"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.1f}"


def stress_json(result: StressResult, gates: list[GateResult]) -> dict[str, Any]:
    return {
        "complete": result.complete,
        "meta": result.meta,
        "delivery": result.account.to_json(),
        "broker_usage": {"cpu_s": result.broker_cpu_s, "peak_rss_bytes": result.broker_peak_rss},
        "gates": [{"name": g.name, "passed": g.passed, "detail": g.detail} for g in gates],
        "fleet": result.fleet.to_json(),
    }


def write_json(path: Path, result: StressResult, gates: list[GateResult]) -> None:
    path.write_text(json.dumps(stress_json(result, gates), indent=2) + "\n")


def stress_table(result: StressResult, gates: list[GateResult]) -> Group:
    """Telemetry per QoS and session kind, then wills, sessions, reconnects, the broker, and the gates."""
    account = result.account
    meta = result.meta
    delivery = Table(
        title=f"fleet stress: {meta['scenario']} on {meta['broker']}, {meta['devices']:,} devices",
        title_justify="left",
    )
    v5 = account.mqtt5
    columns = ["telemetry", "sent", "delivered", "lost", "duplicated", "out of order", "latency ms p50 / p99"]
    if v5.devices:
        columns.insert(4, "expired")
    for name in columns:
        delivery.add_column(name, justify="left" if name == "telemetry" else "right")
    for row in account.telemetry:
        latency = row.latency.summary()
        cells = [
            f"QoS {row.qos}, {'persistent' if row.persistent else 'clean'} session",
            f"{row.sent:,}",
            f"{row.delivered:,}",
            _flag(row.lost, row.loss_is_violation and row.lost_by_broker > 0)
            + (f" ({row.unacked:,} unacked)" if row.unacked else ""),
            _flag(row.duplicated, row.duplicate_is_violation),
            f"{row.out_of_order:,}",
            f"{_ms(latency['p50'])} / {_ms(latency['p99'])}",
        ]
        if v5.devices:
            cells.insert(
                4,
                f"{row.expired:,}"
                + (
                    f" ({_flag(row.expired_delivered, True)} delivered late)" if row.expired_delivered else ""
                ),
            )
        delivery.add_row(*cells)
    reconnect = account.reconnect.summary()
    facts = Table(show_header=False, box=None)
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row(
        "wills",
        f"{account.wills_received:,} received, {account.wills_expected:,} expected, "
        f"{_flag(account.wills_missing, True)} missing, {_flag(account.wills_spurious, True)} spurious "
        f"({account.lost_connections:,} connections died on their own; their wills count neither way)",
    )
    facts.add_row(
        "sessions",
        f"{account.sessions_resumed:,} persistent sessions resumed, {account.sessions_lost:,} lost"
        + (_restarted(account) if account.broker_restarted else "")
        + f", {account.sessions_wrongly_present:,} clean sessions wrongly present",
    )
    for name, text in mqtt5_rows(account):
        facts.add_row(name, text)
    facts.add_row(
        "reconnects",
        f"{reconnect['count']:,}: p50 {_ms(reconnect['p50'])} ms, p90 {_ms(reconnect['p90'])} ms, "
        f"p99 {_ms(reconnect['p99'])} ms, max {_ms(reconnect['max'])} ms",
    )
    cpu = result.broker_cpu_s
    facts.add_row(
        "broker",
        "not local: no CPU or memory figures"
        if cpu is None
        else f"{cpu:,.2f} CPU s over {meta['duration_s'] + meta['drain_s']:,.1f} s, peak RSS "
        f"{_mb(result.broker_peak_rss)} MB",
    )
    facts.add_row("timeline", "; ".join(meta["timeline"]) or "no stages")
    facts.add_row("complete", "[green]yes[/]" if result.complete else f"[red]no: {_cut_short(result)}[/]")
    violations = account.violations
    facts.add_row("violations", "[red]" + "; ".join(violations) + "[/]" if violations else "[green]none[/]")
    for gate in gates:
        facts.add_row(
            f"gate {gate.name}", f"{'[green]pass' if gate.passed else '[red]FAIL'}[/]: {gate.detail}"
        )
    return Group(delivery, facts)


def mqtt5_rows(account: Account) -> list[tuple[str, str]]:
    """The MQTT 5 figures of the account as (name, text with rich markup) rows; none for a 3.1.1 fleet."""
    v5 = account.mqtt5
    if not v5.devices:
        return []
    wills, sessions = v5.wills, v5.sessions
    told = (
        f"; {v5.taken_over_told:,} of {v5.takeovers:,} taken over got DISCONNECT 0x8E" if v5.takeovers else ""
    )
    return [
        (
            "MQTT 5 wills",
            f"{wills.expected:,} due (offline past the will delay, or the session ended), "
            f"{wills.within_delay:,} ends back within the delay (no will allowed), "
            f"{_flag(wills.early, True)} early, {_flag(wills.after_reconnect, True)} after a reconnect "
            f"within the delay, {wills.undecided:,} undecided, {wills.not_due:,} not yet due at the end",
        ),
        (
            "MQTT 5 sessions",
            f"{sessions.resumed:,} resumed within their expiry, {sessions.expired:,} expired as due, "
            f"{_flag(sessions.resumed_after_expiry, True)} resumed after expiry, "
            f"{_flag(sessions.lost_before_expiry, True)} lost before expiry, "
            f"{sessions.undecided:,} undecided",
        ),
        (
            "MQTT 5 flow",
            f"the observer allowed {v5.receive_maximum} deliveries in flight, the broker had at most "
            f"{_flag(v5.inflight_peak, v5.inflight_peak > (v5.receive_maximum or 0))}; "
            f"{account.expired:,} messages expired{told}",
        ),
    ]


def _cut_short(result: StressResult) -> str:
    """Why an incomplete run is incomplete, from its meta (`stopped_by`: the signal's name)."""
    meta = result.meta
    return f"cut short by {meta.get('stopped_by', 'a stop request')} after {meta['duration_s']:,.1f} s"


def _flag(count: int, violation: bool) -> str:
    return f"[red]{count:,}[/]" if count and violation else f"{count:,}"


def write_junit(path: Path, result: StressResult, gates: list[GateResult]) -> None:
    """One test suite, one test case per gate, one for the promises (the violations), and one that
    fails when the run was cut short."""
    cases: list[tuple[str, str | None]] = [(g.name, None if g.passed else g.detail) for g in gates]
    violations = result.account.violations
    cases.append(("mqtt-promises", "; ".join(violations) if violations else None))
    cases.append(("complete", None if result.complete else f"the run was {_cut_short(result)}"))
    failures = sum(1 for _, failure in cases if failure is not None)
    suite = ET.Element(
        "testsuite",
        name=f"fleet stress {result.meta['scenario']}",
        tests=str(len(cases)),
        failures=str(failures),
        errors="0",
        time=f"{result.meta['duration_s'] + result.meta['drain_s']:.3f}",
    )
    for name, failure in cases:
        case = ET.SubElement(suite, "testcase", classname="fleet.stress", name=name)
        if failure is not None:
            ET.SubElement(case, "failure", message=failure).text = failure
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _restarted(account: Account) -> str:
    if account.broker_persistent:
        return " (the broker restarted, keeping its sessions)"
    return " (the broker restarted without persistence)"
