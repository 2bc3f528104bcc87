"""`Shard.from_index`: the shard of a Kubernetes Indexed Job's pod, and how shards cover the fleet."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.simulator import Shard


@given(count=st.integers(1, 40), size=st.integers(0, 300))
def test_the_shards_of_every_index_partition_the_fleet(count: int, size: int) -> None:
    """The shards of indexes 0..N-1 hold each fleet-wide device index exactly once."""
    shards = [Shard.from_index(str(index), str(count)) for index in range(count)]
    owners = [[shard for shard in shards if device in shard] for device in range(size)]
    assert all(len(found) == 1 for found in owners)


def test_index_zero_is_the_first_shard() -> None:
    """Indexes are 0-based, shard numbers 1-based: index 0 of 4 is shard 1/4, index 3 is 4/4."""
    assert Shard.from_index("0", "4") == Shard(1, 4)
    assert Shard.from_index("3", "4") == Shard(4, 4)


@pytest.mark.parametrize(
    ("index", "count", "reason"),
    [
        ("4", "4", "JOB_COMPLETION_INDEX '4': expected 0 to 3"),
        ("-1", "4", "JOB_COMPLETION_INDEX '-1': expected 0 to 3"),
        ("x", "4", "JOB_COMPLETION_INDEX 'x': expected 0 to 3"),
        ("0", "0", "shard count '0': expected a positive integer"),
        ("0", "four", "shard count 'four': expected a positive integer"),
    ],
)
def test_a_bad_index_or_count_names_the_value(index: str, count: str, reason: str) -> None:
    """An index outside 0..N-1 or a count that is not a positive integer is refused with the value."""
    with pytest.raises(ValueError, match=f"^{reason}$"):
        Shard.from_index(index, count)


@given(st.integers(1, 12), st.integers(1, 8))
def test_the_processes_of_a_sharded_fleet_ramp_at_the_fleet_wide_connect_rate_together(
    count: int, workers: int
) -> None:
    """`connect_rate` is fleet-wide: each shard's worker ramps at its part, and the parts add up to it."""
    parts = [
        Shard(number, count, worker, workers).part(1000.0)
        for number in range(1, count + 1)
        for worker in range(workers)
    ]
    assert sum(parts) == pytest.approx(1000.0)
    assert len(set(parts)) == 1
