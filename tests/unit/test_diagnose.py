"""Multi-host connect failures: each host's outcome, and one reason for the pool."""

from __future__ import annotations

import asyncpg

from connman import UnavailableReason
from connman.diagnose import HostsFailed, diagnose, host_outcome
from connman.urls import parse_url

URL = parse_url("postgresql://u:secret-pw@127.0.0.1:5601,127.0.0.1:5602/db")
ONE = parse_url("postgresql://u@127.0.0.1:5601/db")


def test_each_host_outcome_is_a_short_word() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed")
    standby = asyncpg.TargetServerAttributeNotMatched("no match")
    assert host_outcome(refused, ONE) == ("refused", UnavailableReason.UNREACHABLE)
    assert host_outcome(standby, ONE) == ("read-only", UnavailableReason.READ_ONLY)
    assert host_outcome(TimeoutError(), ONE) == ("timed out", UnavailableReason.UNREACHABLE)


def test_a_refused_host_and_a_standby_say_no_host_accepts_writes() -> None:
    exc = HostsFailed(
        [("127.0.0.1:5601", "refused"), ("127.0.0.1:5602", "read-only")],
        [UnavailableReason.UNREACHABLE, UnavailableReason.READ_ONLY],
    )
    assert str(exc) == "127.0.0.1:5601 refused; 127.0.0.1:5602 read-only"
    found = diagnose(exc, URL)
    assert found.reason is UnavailableReason.READ_ONLY
    assert "promote a standby" in found.hint
    assert "127.0.0.1:5601 refused; 127.0.0.1:5602 read-only" in found.hint
    assert "secret-pw" not in found.hint


def test_nothing_answering_on_any_host_is_unreachable() -> None:
    exc = HostsFailed(
        [("127.0.0.1:5601", "refused"), ("127.0.0.1:5602", "timed out")],
        [UnavailableReason.UNREACHABLE, UnavailableReason.UNREACHABLE],
    )
    assert diagnose(exc, URL).reason is UnavailableReason.UNREACHABLE
