"""The operator's peering priority: exactly one replica may be the highest."""

from __future__ import annotations

import pytest
from voicepool_operator.main import main, seniority_priority


def test_older_replicas_outrank_younger_ones() -> None:
    """kopf pauses a replica that sees a peer above it: the one already working stays on."""
    older, younger = (
        seniority_priority(1_764_000_000_000_000_000),
        seniority_priority(1_764_000_000_000_001_000),
    )
    assert older > younger


def test_replicas_started_in_the_same_millisecond_still_differ() -> None:
    """Equal priorities would pause every replica; microseconds keep them apart."""
    assert seniority_priority(1_000_000_000) != seniority_priority(1_000_001_000)


def test_priority_fits_a_json_number_exactly() -> None:
    """Peering records are JSON: the value must survive a round trip through a double."""
    p = seniority_priority()
    assert p < 0 and float(p) == p


def test_too_short_peering_lifetime_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--peering-lifetime", "5", "--metrics-port", "0", "--liveness-port", "0"])
    assert "--peering-lifetime must be >= 10" in capsys.readouterr().err
