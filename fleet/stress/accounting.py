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
from collections.abc import KeysView, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.report import Histogram
from fleet.stress.mqtt5 import MARGIN, ROUNDING, Device5, Mqtt5Account, Span, expired, sessions5, wills5

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

    __slots__ = (
        "_last",
        "_seen",
        "duplicates",
        "expired_delivered",
        "latency",
        "out_of_order",
        "statuses",
        "unknown",
        "will_times",
        "wills",
    )

    def __init__(self) -> None:
        self._seen: dict[str, dict[int, float]] = {}  # seq -> the payload's ts
        self._last: dict[str, int] = {}
        self.duplicates: Counter[str] = Counter()
        self.out_of_order: Counter[str] = Counter()
        self.latency: dict[str, Histogram] = {}  # by device
        self.wills: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, str]] = Counter()  # (device, "online" or the reason)
        self.unknown = 0  # telemetry of devices not in the fleet, or not telemetry at all
        self.will_times: dict[str, list[float]] = {}  # when each will came (the observer's clock)
        self.expired_delivered: Counter[str] = Counter()  # delivered past their Message Expiry

    def telemetry(
        self, device: str, seq: int, latency: float, ts: float = 0.0, expiry: int | None = None
    ) -> None:
        """One telemetry message of `device` numbered `seq`, sent at `ts` and received `latency`
        seconds later; with its Message Expiry Interval `expiry`, if it had one."""
        seen = self._seen.get(device)
        if seen is None:
            seen = self._seen[device] = {}
        if seq in seen:
            self.duplicates[device] += 1
            return
        seen[seq] = ts
        if expiry is not None and latency > expiry + ROUNDING + MARGIN:
            self.expired_delivered[device] += 1
        last = self._last.get(device, -1)
        if seq < last:
            self.out_of_order[device] += 1
        else:
            self._last[device] = seq
        histogram = self.latency.get(device)
        if histogram is None:
            histogram = self.latency[device] = Histogram()
        histogram.add(latency)

    def status(self, device: str, online: bool, reason: str | None, at: float = 0.0) -> None:
        """A live status message received at `at`: a birth, a clean offline status, or a will
        (reason 'lost')."""
        if online:
            self.statuses[device, "online"] += 1
        elif reason == "lost":
            self.wills[device] += 1
            self.will_times.setdefault(device, []).append(at)
        else:
            self.statuses[device, reason or "offline"] += 1

    def received(self, device: str) -> KeysView[int]:
        return self._seen.get(device, {}).keys()

    def sent_at(self, device: str) -> dict[int, float]:
        """The received seqs of `device` with their payload's `ts`."""
        return self._seen.get(device, {})


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
    expired: int = 0  # not delivered: expired under Message Expiry (MQTT 5), not counted as lost
    expired_delivered: int = 0  # delivered after their Message Expiry Interval: a violation
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
            "expired": self.expired,
            "expired_delivered": self.expired_delivered,
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
    mqtt5: Mqtt5Account = field(default_factory=Mqtt5Account)

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
            if row.expired_delivered:
                found.append(
                    f"{row.expired_delivered:,} QoS {row.qos} messages delivered after their Message Expiry "
                    "Interval [MQTT-3.3.2-5]"
                )
        if self.wills_missing:
            found.append(f"{self.wills_missing:,} of {self.wills_expected:,} expected wills never came")
        if self.wills_spurious:
            found.append(f"{self.wills_spurious:,} wills after clean ends")
        legacy = self.sessions_lost - self.mqtt5.sessions.lost_before_expiry  # v5's are told below
        if legacy and (self.broker_persistent or not self.broker_restarted):
            found.append(f"{legacy:,} persistent sessions were not present on reconnect")
        if self.sessions_wrongly_present:
            found.append(f"{self.sessions_wrongly_present:,} clean sessions reported present")
        found.extend(self._violations5())
        return found

    def _violations5(self) -> list[str]:
        v5 = self.mqtt5
        wills, sessions = v5.wills, v5.sessions
        found = []
        if wills.early:
            found.append(f"{wills.early:,} wills came before their Will Delay Interval passed [MQTT-3.1.3-9]")
        if wills.after_reconnect:
            found.append(
                f"{wills.after_reconnect:,} wills came although the device reconnected within the Will "
                "Delay Interval [MQTT-3.1.3-9]"
            )
        if sessions.resumed_after_expiry:
            found.append(
                f"{sessions.resumed_after_expiry:,} sessions resumed after their Session Expiry Interval "
                "[MQTT-3.1.2-23]"
            )
        if sessions.lost_before_expiry and (self.broker_persistent or not self.broker_restarted):
            found.append(
                f"{sessions.lost_before_expiry:,} sessions lost before their Session Expiry Interval "
                "[MQTT-3.1.2-23]"
            )
        if v5.taken_over_told < v5.takeovers:
            found.append(
                f"{v5.takeovers - v5.taken_over_told:,} of {v5.takeovers:,} devices taken over got no "
                "DISCONNECT 0x8E [MQTT-3.1.4-3]"
            )
        if v5.receive_maximum is not None and v5.inflight_peak > v5.receive_maximum:
            found.append(
                f"the broker had {v5.inflight_peak:,} QoS 1/2 deliveries in flight to the observer, above "
                f"its Receive Maximum of {v5.receive_maximum:,} [MQTT-3.3.4-9]"
            )
        return found

    @property
    def expired(self) -> int:
        return sum(row.expired for row in self.telemetry)

    def to_json(self) -> dict[str, Any]:
        return {
            "telemetry": {row.key: row.to_json() for row in self.telemetry},
            "wills": {
                "expected": self.wills_expected,
                "received": self.wills_received,
                "missing": self.wills_missing,
                "spurious": self.wills_spurious,
                "lost_connections": self.lost_connections,
                "mqtt5": self.mqtt5.wills.to_json(),
            },
            "sessions": {
                "resumed": self.sessions_resumed,
                "lost": self.sessions_lost,
                "wrongly_present": self.sessions_wrongly_present,
                "broker_restarted": self.broker_restarted,
                "broker_persistent": self.broker_persistent,
                "mqtt5": self.mqtt5.sessions.to_json(),
            },
            "mqtt5": {
                "devices": self.mqtt5.devices,
                "expired": self.expired,
                "takeovers": {"made": self.mqtt5.takeovers, "told_0x8e": self.mqtt5.taken_over_told},
                "receive_maximum": {
                    "observer_announced": self.mqtt5.receive_maximum,
                    "inflight_peak": self.mqtt5.inflight_peak,
                },
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
    mqtt5: Mapping[str, Device5] | None = None,
    links: Mapping[str, Sequence[Span]] | None = None,
    others: Mapping[str, Sequence[Span]] | None = None,
    until: float = math.inf,
    observer_gaps: Sequence[tuple[float, float]] = (),
    receive_maximum: int | None = None,
    inflight_peak: int = 0,
    takeovers: int = 0,
    taken_over_told: int = 0,
) -> Account:
    """Set what the ledger received against what was sent.

    `sent` is each device's count of telemetry messages (seqs 0 to count - 1), `unacked` the seqs
    the broker never acknowledged (QoS 1/2 still in the device's session), `ends` counts its
    ends by (device, kind), `connects` counts the connects of MQTT 3.1.1 devices by (persistent,
    reconnect, present).

    The devices of `mqtt5` are judged by MQTT 5's rules (`fleet.stress.mqtt5`) on their connections
    (`links`, and `others` that the stress engine made with their client ids), the observer's stop
    time `until`, its absences `observer_gaps` (wall clock), and the Receive Maximum it announced with
    the most deliveries it had unacknowledged at once; `takeovers` of MQTT 5 devices, of which
    `taken_over_told` got DISCONNECT 0x8E.
    """
    mqtt5 = mqtt5 or {}
    links = links or {}
    others = others or {}
    v5 = Mqtt5Account(
        devices=len(mqtt5),
        receive_maximum=receive_maximum,
        inflight_peak=inflight_peak,
        takeovers=takeovers,
        taken_over_told=taken_over_told,
    )
    rows: dict[tuple[int, bool], QosAccount] = {}
    wills_expected = wills_missing = wills_spurious = lost_connections = 0
    for device, spec in devices.items():
        row = rows.get((spec.qos, spec.persistent))
        if row is None:
            row = rows[spec.qos, spec.persistent] = QosAccount(spec.qos, spec.persistent)
        count = sent.get(device, 0)
        received = ledger.received(device)
        delivered = sum(1 for seq in received if seq < count)
        unacked_seqs = unacked.get(device, set()) - received
        row.devices += 1
        row.sent += count
        row.delivered += delivered
        row.duplicated += ledger.duplicates[device]
        row.out_of_order += ledger.out_of_order[device]
        histogram = ledger.latency.get(device)
        if histogram is not None:
            row.latency.merge(histogram)
        spec5 = mqtt5.get(device)
        if spec5 is not None:
            missing = [seq for seq in range(count) if seq not in received and seq not in unacked_seqs]
            gone = expired(spec5, missing, ledger.sent_at(device), observer_gaps)
            row.expired += gone
            row.expired_delivered += ledger.expired_delivered[device]
            row.lost += count - delivered - gone
            row.unacked += len(unacked_seqs)
            own, theirs = links.get(device, ()), others.get(device, ())
            tally = wills5(spec5, own, theirs, ledger.will_times.get(device, []), until)
            v5.wills.add(tally)
            v5.sessions.add(sessions5(spec5, own, theirs))
            wills_expected += tally.expected
            wills_missing += tally.missing
            wills_spurious += tally.spurious + tally.after_reconnect
            lost_connections += ends.get((device, "lost"), 0)
            continue
        row.lost += count - delivered
        row.unacked += len(unacked_seqs)
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
        sessions_resumed=connects.get((True, True, True), 0) + v5.sessions.resumed,
        sessions_lost=connects.get((True, True, False), 0) + v5.sessions.lost_before_expiry,
        sessions_wrongly_present=connects.get((False, True, True), 0) + connects.get((False, False, True), 0),
        reconnect=reconnect,
        unknown=unknown,
        broker_restarted=broker_restarted,
        broker_persistent=broker_persistent,
        mqtt5=v5,
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
    max_expired: int | None = None

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
        if self.max_expired is not None:
            results.append(
                GateResult(
                    "max-expired",
                    result.expired <= self.max_expired,
                    f"{result.expired:,} messages expired under Message Expiry (limit {self.max_expired:,})",
                )
            )
        if not complete:
            return [
                GateResult(gate.name, False, f"the run was cut short; on what it saw: {gate.detail}")
                for gate in results
            ]
        return results
