"""The conformance kit's checks on what it observed (voicepool_devstack.conformance): pure."""

from __future__ import annotations

from voicepool_contract import (
    ANN_CAPACITY,
    ANN_DRAIN,
    ANN_REPORTED_AT,
    ANN_SAFE_TO_EVICT,
    ANN_SESSIONS,
    ANN_STATE,
)
from voicepool_devstack.conformance import (
    Observed,
    Step,
    check_boot_reports,
    first_report,
    foreign_changes,
    format_step,
    over_capacity,
    worker_env,
)
from voicepool_devstack.livekit import LiveKitInfo


def report(at: float, state: str, sessions: int = 0, capacity: int = 1, **more: str) -> Observed:
    return Observed(
        at,
        {
            ANN_STATE: state,
            ANN_SESSIONS: str(sessions),
            ANN_CAPACITY: str(capacity),
            ANN_REPORTED_AT: "2026-12-07T05:00:00Z",
            **more,
        },
    )


def test_boot_must_start_with_a_complete_starting_report() -> None:
    assert check_boot_reports([report(1, "starting"), report(2, "idle")], 1) is None
    never = check_boot_reports([Observed(1, {"other": "x"})], 1)
    assert never is not None and "missing step" in never and "starting" in never
    idle_first = check_boot_reports([report(1, "idle")], 1)
    assert idle_first is not None and "'idle'" in idle_first
    wrong_capacity = check_boot_reports([report(1, "starting", capacity=2)], 1)
    assert wrong_capacity is not None and "VOICEPOOL_SESSIONS_PER_POD" in wrong_capacity
    partial = Observed(1, {ANN_STATE: "starting", ANN_SESSIONS: "0"})
    missing = check_boot_reports([partial], 1)
    assert missing is not None and ANN_CAPACITY in missing and ANN_REPORTED_AT in missing


def test_first_report_matches_state_sessions_and_time() -> None:
    history = [report(1, "starting"), report(2, "idle"), report(3, "busy", 1), report(5, "idle")]
    assert first_report(history, state="idle") == history[1]
    assert first_report(history, since=4, state="idle") == history[3]
    assert first_report(history, sessions="1", state="busy") == history[2]
    assert first_report(history, state="draining") is None


def test_reports_over_capacity_are_found() -> None:
    assert over_capacity([report(1, "busy", 1)], 1) is None
    assert over_capacity([report(1, "busy", 1), report(2, "busy", 2)], 1) is not None


def test_only_the_four_reports_and_the_operators_keys_may_change() -> None:
    initial = {"kwok.voicepool.dev/report": "none"}
    ok = [report(1, "starting", **initial), report(2, "draining", **initial, **{ANN_DRAIN: "true"})]
    assert foreign_changes(initial, ok) == []
    hinted = [report(1, "idle", **{ANN_SAFE_TO_EVICT: "true"})]
    assert foreign_changes({}, hinted) == [ANN_SAFE_TO_EVICT]


def test_worker_env_is_the_operators_with_the_template_on_top() -> None:
    lk = LiveKitInfo("ws://lk", "http://lk", "key", "secret")
    env = worker_env(
        {"PATH": "/bin", "VOICEPOOL_KUBECONFIG": "/x", "VOICEPOOL_AGENT": "a:b"},
        pod="p",
        namespace="ns",
        kubeconfig="/kc",
        livekit=lk,
        agent="agent-1",
        capacity=2,
        http_port=9000,
        drain_timeout_s=60,
        extra={"VOICEPOOL_HTTP_PORT": "9001"},
    )
    assert "VOICEPOOL_KUBECONFIG" not in env and env["PATH"] == "/bin"
    assert env["VOICEPOOL_AGENT"] == "a:b" and env["POD_NAME"] == "p"
    assert env["LIVEKIT_API_SECRET"] == "secret" and env["VOICEPOOL_AGENT_NAME"] == "agent-1"
    assert env["VOICEPOOL_SESSIONS_PER_POD"] == "2" and env["VOICEPOOL_HTTP_PORT"] == "9001"


def test_a_step_is_one_line() -> None:
    line = format_step(Step("reports starting at boot", False, 1.25, "missing step: x"))
    assert line.startswith("FAIL  reports starting at boot") and line.endswith("missing step: x")
    assert "\n" not in line and "1.2 s" in line
