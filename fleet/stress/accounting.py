"""The delivery account of a stress run, by (device, seq). Pure: no I/O, no clocks.

The observer feeds a `Ledger` with what it received; `account()` sets that against what the devices
sent, how their online periods ended and how they reconnected, and tells apart what the QoS allows
from a violation:

- loss: allowed at QoS 0, and at QoS 1/2 in a clean session (its messages die with the connection);
  a violation at QoS 1/2 in a persistent session, unless the broker never acknowledged the message
  (it was still in the device's session when the run ended: `unacked`);
- duplicates: allowed at QoS 1 (at least once); a violation at QoS 0 and QoS 2;
- out of order: counted, never a violation (MQTT orders a topic's messages only within one QoS
  flow, and a redelivery after a reconnect may come after newer messages);
- wills: one expected per abrupt or silent end of a device with a will; a will beyond those and
  beyond the connections that died on their own (`lost`) is spurious;
- sessions: a persistent session must be present when its device reconnects, and a clean session
  never is.

`Gates` turn the account into pass or fail for CI; a run cut short passes none.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.report import Histogram

__all__ = ["Account", "DeviceSpec", "GateResult", "Gates", "Ledger", "QosAccount", "account"]


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What the account needs to know of a device: its group, telemetry QoS, session and will."""

    group: str
    qos: int
    persistent: bool
    will: bool


class Ledger:
    """What the observer received, kept per device: seqs seen, duplicates, reordering, latency, wills."""

    __slots__ = ("_last", "_seen", "duplicates", "latency", "out_of_order", "statuses", "unknown", "wills")

    def __init__(self) -> None:
        self._seen: dict[str, set[int]] = {}
        self._last: dict[str, int] = {}
        self.duplicates: Counter[str] = Counter()
        self.out_of_order: Counter[str] = Counter()
        self.latency: dict[str, Histogram] = {}  # by device
        self.wills: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, str]] = Counter()  # (device, "online" or the reason)
        self.unknown = 0  # telemetry of devices not in the fleet, or not telemetry at all

    def telemetry(self, device: str, seq: int, latency: float) -> None:
        """One telemetry message of `device` numbered `seq`, received `latency` seconds after its send."""
        seen = self._seen.get(device)
        if seen is None:
            seen = self._seen[device] = set()
        if seq in seen:
            self.duplicates[device] += 1
            return
        seen.add(seq)
        last = self._last.get(device, -1)
        if seq < last:
            self.out_of_order[device] += 1
        else:
            self._last[device] = seq
        histogram = self.latency.get(device)
        if histogram is None:
            histogram = self.latency[device] = Histogram()
        histogram.add(latency)

    def status(self, device: str, online: bool, reason: str | None) -> None:
        """A live status message: a birth, a clean offline status, or a will (reason 'lost')."""
        if online:
            self.statuses[device, "online"] += 1
        elif reason == "lost":
            self.wills[device] += 1
        else:
            self.statuses[device, reason or "offline"] += 1

    def received(self, device: str) -> set[int]:
        return self._seen.get(device, set())


@dataclass(slots=True)
class QosAccount:
    """Telemetry of one QoS and session kind: sent versus received."""

    qos: int
    persistent: bool
    devices: int = 0
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    unacked: int = 0  # of the lost: never acknowledged by the broker
    duplicated: int = 0
    out_of_order: int = 0
    latency: Histogram = field(default_factory=Histogram)

    @property
    def key(self) -> str:
        return f"qos{self.qos}-{'persistent' if self.persistent else 'clean'}"

    @property
    def loss_is_violation(self) -> bool:
        return self.qos > 0 and self.persistent

    @property
    def lost_by_broker(self) -> int:
        """Lost messages the broker had acknowledged: its responsibility."""
        return self.lost - self.unacked

    @property
    def duplicate_is_violation(self) -> bool:
        return self.qos != 1

    def to_json(self) -> dict[str, Any]:
        return {
            "qos": self.qos,
            "session": "persistent" if self.persistent else "clean",
            "devices": self.devices,
            "sent": self.sent,
            "delivered": self.delivered,
            "lost": self.lost,
            "lost_unacked": self.unacked,
            "lost_is_violation": self.loss_is_violation,
            "duplicated": self.duplicated,
            "duplicate_is_violation": self.duplicate_is_violation,
            "out_of_order": self.out_of_order,
            "latency_s": self.latency.summary(),
        }


@dataclass(frozen=True, slots=True)
class Account:
    """The whole account of a run; `violations` lists what broke a promise, in words."""

    telemetry: tuple[QosAccount, ...]
    wills_expected: int
    wills_received: int
    wills_missing: int
    wills_spurious: int
    lost_connections: int
    sessions_resumed: int
    sessions_lost: int
    sessions_wrongly_present: int
    reconnect: Histogram
    unknown: int
    broker_restarted: bool
    # Whether the broker keeps sessions across a restart: then a session lost is a violation too.
    broker_persistent: bool = False

    def qos(self, qos: int, persistent: bool | None = None) -> list[QosAccount]:
        return [
            a for a in self.telemetry if a.qos == qos and (persistent is None or a.persistent == persistent)
        ]

    @property
    def violations(self) -> list[str]:
        found = []
        for row in self.telemetry:
            if row.lost_by_broker and row.loss_is_violation:
                found.append(
                    f"{row.lost_by_broker:,} acknowledged QoS {row.qos} messages lost in persistent sessions"
                )
            if row.duplicated and row.duplicate_is_violation:
                found.append(f"{row.duplicated:,} QoS {row.qos} messages duplicated")
        if self.wills_missing:
            found.append(f"{self.wills_missing:,} of {self.wills_expected:,} expected wills never came")
        if self.wills_spurious:
            found.append(f"{self.wills_spurious:,} wills after clean ends")
        if self.sessions_lost and (self.broker_persistent or not self.broker_restarted):
            found.append(f"{self.sessions_lost:,} persistent sessions were not present on reconnect")
        if self.sessions_wrongly_present:
            found.append(f"{self.sessions_wrongly_present:,} clean sessions reported present")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "telemetry": {row.key: row.to_json() for row in self.telemetry},
            "wills": {
                "expected": self.wills_expected,
                "received": self.wills_received,
                "missing": self.wills_missing,
                "spurious": self.wills_spurious,
                "lost_connections": self.lost_connections,
            },
            "sessions": {
                "resumed": self.sessions_resumed,
                "lost": self.sessions_lost,
                "wrongly_present": self.sessions_wrongly_present,
                "broker_restarted": self.broker_restarted,
                "broker_persistent": self.broker_persistent,
            },
            "reconnect_time_s": self.reconnect.summary(),
            "unknown_messages": self.unknown,
            "violations": self.violations,
        }


def account(
    ledger: Ledger,
    devices: Mapping[str, DeviceSpec],
    sent: Mapping[str, int],
    unacked: Mapping[str, set[int]],
    ends: Mapping[tuple[str, str], int],
    connects: Mapping[tuple[bool, bool, bool], int],
    reconnect: Histogram,
    *,
    broker_restarted: bool = False,
    broker_persistent: bool = False,
) -> Account:
    """Set what the ledger received against what was sent.

    `sent` is each device's count of telemetry messages (seqs 0 to count - 1), `unacked` the seqs
    the broker never acknowledged (QoS 1/2 still in the device's session), `ends` counts its
    ends by (device, kind), `connects` counts connects by (persistent, reconnect, present).
    """
    rows: dict[tuple[int, bool], QosAccount] = {}
    wills_expected = wills_missing = wills_spurious = lost_connections = 0
    for device, spec in devices.items():
        row = rows.get((spec.qos, spec.persistent))
        if row is None:
            row = rows[spec.qos, spec.persistent] = QosAccount(spec.qos, spec.persistent)
        count = sent.get(device, 0)
        received = ledger.received(device)
        delivered = sum(1 for seq in received if seq < count)
        row.devices += 1
        row.sent += count
        row.delivered += delivered
        row.lost += count - delivered
        row.unacked += len(unacked.get(device, set()) - received)
        row.duplicated += ledger.duplicates[device]
        row.out_of_order += ledger.out_of_order[device]
        histogram = ledger.latency.get(device)
        if histogram is not None:
            row.latency.merge(histogram)
        lost = ends.get((device, "lost"), 0)
        lost_connections += lost
        expected = ends.get((device, "abrupt"), 0) + ends.get((device, "silent"), 0) if spec.will else 0
        wills = ledger.wills[device]
        wills_expected += expected
        wills_missing += max(0, expected - wills)
        wills_spurious += max(0, wills - expected - (lost if spec.will else 0))
    unknown = ledger.unknown + sum(count for device, count in ledger.wills.items() if device not in devices)
    return Account(
        telemetry=tuple(rows[key] for key in sorted(rows)),
        wills_expected=wills_expected,
        wills_received=sum(ledger.wills[device] for device in devices),
        wills_missing=wills_missing,
        wills_spurious=wills_spurious,
        lost_connections=lost_connections,
        sessions_resumed=connects.get((True, True, True), 0),
        sessions_lost=connects.get((True, True, False), 0),
        sessions_wrongly_present=connects.get((False, True, True), 0) + connects.get((False, False, True), 0),
        reconnect=reconnect,
        unknown=unknown,
        broker_restarted=broker_restarted,
        broker_persistent=broker_persistent,
    )


@dataclass(frozen=True, slots=True)
class GateResult:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Gates:
    """Thresholds for CI; None: that gate is off."""

    max_loss_qos1: int | None = None
    max_dup_qos2: int | None = None
    max_reconnect_p99: float | None = None  # seconds
    require_wills: bool = False

    def check(self, result: Account, *, complete: bool = True) -> list[GateResult]:
        """Each gate that is on, judged on `result`; on an incomplete run (cut short) none passes."""
        results = []
        if self.max_loss_qos1 is not None:
            lost = sum(row.lost_by_broker for row in result.qos(1, persistent=True))
            results.append(
                GateResult(
                    "max-loss-qos1",
                    lost <= self.max_loss_qos1,
                    f"{lost:,} acknowledged QoS 1 messages lost in persistent sessions "
                    f"(limit {self.max_loss_qos1:,})",
                )
            )
        if self.max_dup_qos2 is not None:
            duplicated = sum(row.duplicated for row in result.qos(2))
            results.append(
                GateResult(
                    "max-dup-qos2",
                    duplicated <= self.max_dup_qos2,
                    f"{duplicated:,} QoS 2 messages duplicated (limit {self.max_dup_qos2:,})",
                )
            )
        if self.max_reconnect_p99 is not None:
            p99 = result.reconnect.percentile(99)
            seconds = 0.0 if p99 is None else p99
            results.append(
                GateResult(
                    "max-reconnect-p99",
                    seconds <= self.max_reconnect_p99 or math.isclose(seconds, self.max_reconnect_p99),
                    f"reconnect p99 {seconds:.3f}s over {result.reconnect.count:,} reconnects "
                    f"(limit {self.max_reconnect_p99:g}s)",
                )
            )
        if self.require_wills:
            results.append(
                GateResult(
                    "require-wills",
                    not result.wills_missing and not result.wills_spurious,
                    f"{result.wills_received:,} wills received, {result.wills_expected:,} expected, "
                    f"{result.wills_missing:,} missing, {result.wills_spurious:,} spurious",
                )
            )
        if not complete:
            return [
                GateResult(gate.name, False, f"the run was cut short; on what it saw: {gate.detail}")
                for gate in results
            ]
        return results
