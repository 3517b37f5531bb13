"""Ports for the stack's servers: a band the kernel never hands out, each port to one process.

The cross-process tests run a second Python process against a band of ten ports, because
the clash they guard against (CI: kwok "bind: address already in use") was between processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from voicepool_devstack import ports
from voicepool_devstack.errors import DevstackError

BAND_SIZE = 10


def test_the_default_band_ends_where_the_kernels_ephemeral_range_starts() -> None:
    assert ports.band((32768, 60999)) == (15000, 30000)
    assert ports.band((20000, 60999)) == (15000, 20000)


def test_a_kernel_range_that_leaves_no_band_below_uses_the_ports_above_it() -> None:
    assert ports.band((10000, 50000)) == (50001, 65536)


def test_a_kernel_range_that_leaves_no_band_at_all_asks_for_one() -> None:
    with pytest.raises(DevstackError, match=ports.PORT_RANGE_ENV):
        ports.band((1024, 65000))


def test_the_band_can_be_set_by_hand_and_bad_input_says_what_it_wants() -> None:
    assert ports.band((32768, 60999), "40000-40099") == (40000, 40100)
    for bad in ("40000", "a-b", "40100-40000", "80-90"):
        with pytest.raises(DevstackError, match="VOICEPOOL_PORT_RANGE"):
            ports.band((32768, 60999), bad)


def test_ports_handed_out_are_outside_the_ephemeral_range_free_and_never_twice() -> None:
    low, high = ports._ephemeral()
    got = [ports.free_port() for _ in range(20)] + [ports.free_port(udp=True)]
    assert len(set(got)) == len(got)
    assert all(not low <= p <= high for p in got)
    first = ports.free_ports(50, udp=True)
    assert not set(range(first, first + 50)) & set(got)


def _quiet_band() -> str:
    """Ten consecutive ports nothing binds now, outside the band this process uses."""
    for start in range(31000, 32700, BAND_SIZE):
        if all(ports._bindable(p, udp=True) for p in range(start, start + BAND_SIZE)):
            return f"{start}-{start + BAND_SIZE - 1}"
    pytest.skip("no ten consecutive free ports in 31000-32700")


CHILD = textwrap.dedent(
    """
    import sys
    from voicepool_devstack.ports import free_port
    print(*[free_port() for _ in range(int(sys.argv[1]))], flush=True)
    sys.stdin.readline()  # hold the claims until the parent says
    """
)


def _child(count: int, env: dict[str, str]) -> tuple[subprocess.Popen[str], set[int]]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    return child, {int(p) for p in child.stdout.readline().split()}


def test_a_port_claimed_by_one_process_is_not_handed_to_another_until_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    band = _quiet_band()
    env = {**os.environ, ports.PORT_RANGE_ENV: band}
    monkeypatch.setenv(ports.PORT_RANGE_ENV, band)
    monkeypatch.setattr(ports, "_claimed", set())
    child, theirs = _child(6, env)
    mine: set[int] = set()
    try:
        mine = {ports.free_port() for _ in range(BAND_SIZE - 6)}
        assert len(theirs) == 6 and len(mine) == BAND_SIZE - 6
        assert not mine & theirs
        with pytest.raises(DevstackError, match="found no 1 free port"):
            ports.free_port()
    finally:
        _end(child)
        ports._release(sorted(mine))
    # the child is gone, and its claims with it; ours are released: a new process gets all
    again, got = _child(BAND_SIZE, env)
    _end(again)
    assert got == mine | theirs


def _end(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("\n")
    child.stdin.close()
    child.wait(timeout=10)
