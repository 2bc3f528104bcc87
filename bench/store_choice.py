"""Which embedded store for the broker's persistence: the stdlib's sqlite3 in WAL mode, or LMDB.

The workload is the broker's: each "turn" stores BATCH QoS 1 messages (200-byte payload, a topic, a
client id) queued for a session and deletes the BATCH stored one turn earlier (acknowledged), then
commits durably (one fsync per commit, as `sync = "always"` does once per event-loop turn). Reported
per store and batch size: commits/s, messages/s, and the mean commit latency; and the latency of a
bare `os.fsync` of a 4 KB write on the same disk, which bounds every durable store.

    .venv/bin/pip install lmdb   # LMDB is not a dependency of mqtt-fleet; only this bench uses it
    .venv/bin/python bench/store_choice.py [--seconds 2] [--batches 1,50] [--dir /tmp]

Each measurement runs for --seconds in a fresh temporary folder under --dir (default: the system's
temporary folder; choose one on the disk the broker's store will use).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import support

PAYLOAD = os.urandom(200)
TOPIC = b"fleet/dev-0042/cmd"
CLIENT = b"dev-0042"


def sqlite_turns(folder: Path, batch: int) -> Callable[[], None]:
    db = sqlite3.connect(folder / "store.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA locking_mode = EXCLUSIVE")
    db.execute(
        "CREATE TABLE entries (key INTEGER PRIMARY KEY, client_id TEXT, packet_id INTEGER, qos INTEGER,"
        " topic TEXT, payload BLOB)"
    )
    state = {"next": 1}

    def turn() -> None:
        first = state["next"]
        state["next"] = first + batch
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO entries VALUES (?, ?, NULL, 1, ?, ?)",
            ((key, CLIENT, TOPIC, PAYLOAD) for key in range(first, first + batch)),
        )
        db.executemany(
            "DELETE FROM entries WHERE key = ?", ((key,) for key in range(max(1, first - batch), first))
        )
        db.execute("COMMIT")

    return turn


def lmdb_turns(folder: Path, batch: int) -> Callable[[], None]:
    import lmdb

    env = lmdb.open(str(folder / "store.lmdb"), map_size=1 << 30, max_dbs=4, sync=True, metasync=True)
    entries = env.open_db(b"entries")
    state = {"next": 1}

    def turn() -> None:
        first = state["next"]
        state["next"] = first + batch
        with env.begin(write=True, db=entries) as txn:
            for key in range(first, first + batch):
                value = struct.pack("!HB", len(CLIENT), 1) + CLIENT + struct.pack("!H", len(TOPIC)) + TOPIC
                txn.put(key.to_bytes(8, "big"), value + PAYLOAD)
            for key in range(max(1, first - batch), first):
                txn.delete(key.to_bytes(8, "big"))

    return turn


def measure(make: Callable[[Path, int], Callable[[], None]], base: Path, batch: int, seconds: float) -> str:
    with tempfile.TemporaryDirectory(dir=base) as folder:
        turn = make(Path(folder), batch)
        turn()
        turns = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            turn()
            turns += 1
        elapsed = time.perf_counter() - start
    return f"{turns / elapsed:>10.0f} {turns * batch / elapsed:>10.0f} {elapsed / turns * 1000:>12.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batches", default="1,50")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    stores: dict[str, Callable[[Path, int], Callable[[], None]]] = {"sqlite3 WAL": sqlite_turns}
    try:
        import lmdb  # noqa: F401

        stores["lmdb"] = lmdb_turns
    except ImportError:
        print("lmdb not installed (.venv/bin/pip install lmdb): measuring sqlite3 only")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        latency = support.fsync_latency(Path(folder), args.seconds)
        print(f"fsync of a 4 KB write in {args.dir}: {latency * 1000:.2f} ms")
    print(f"{'store':<12} {'batch':>5} {'commits/s':>10} {'msg/s':>10} {'ms/commit':>12}")
    for batch in (int(b) for b in args.batches.split(",")):
        for name, make in stores.items():
            print(f"{name:<12} {batch:>5} {measure(make, args.dir, batch, args.seconds)}")


if __name__ == "__main__":
    main()
