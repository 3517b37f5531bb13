"""The worker conformance kit (``voicepool-devstack conformance``) on real workers.

The kit runs as its users run it, as a command, on the session's stack (its kube-apiserver and
livekit-server, named by ``VOICEPOOL_KUBECONFIG``/``VOICEPOOL_LIVEKIT_*``): it passes on the
built-in receptionist and on the example team agent, and it fails, naming the missing step, on
a worker that registers with LiveKit but never reports on its pod.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from voicepool_devstack.testing import Environment

pytestmark = [pytest.mark.cluster, pytest.mark.livekit]

#: The example team agent, configured as examples/agents/booking/pool.yaml does. Its LLM is
#: asked only when a caller speaks; the kit's calls say nothing, so no model server runs.
BOOKING_ENV = {
    "VOICEPOOL_AGENT": "booking_agent.agent:app",
    "VOICEPOOL_LLM": "openai",
    "VOICEPOOL_LLM_BASE_URL": "http://127.0.0.1:9/v1",
    "VOICEPOOL_LLM_MODEL": "unused",
    "VOICEPOOL_LLM_API_KEY": "unused",
}
WORKER = [sys.executable, "-m", "voicepool_worker.runtime.server"]
#: A worker that registers with LiveKit and takes calls but never reports on its pod: the
#: devstack's stand-in agent under the name the kit gives it.
NEVER_REPORTS = [
    "sh",
    "-c",
    f'AGENT="$VOICEPOOL_AGENT_NAME" HTTP_PORT="$VOICEPOOL_HTTP_PORT" CAPACITY=1 exec '
    f"{sys.executable} -m voicepool_devstack.stand_in_agent",
]


def conformance(
    env: Environment, tmp_path: Path, command: list[str], *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """The kit as a command on the session's stack; its output is printed for the log."""
    stack = {
        "VOICEPOOL_KUBECONFIG": env.kubeconfig,
        "VOICEPOOL_LIVEKIT_URL": env.livekit.url,
        "VOICEPOOL_LIVEKIT_API_KEY": env.livekit.api_key,
        "VOICEPOOL_LIVEKIT_API_SECRET": env.livekit.api_secret,
    }
    full = {k: v for k, v in os.environ.items() if not k.startswith(("VOICEPOOL_", "POD_"))}
    full.update(stack)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicepool_devstack.cli",
            "conformance",
            "--dir",
            str(tmp_path / "no-recorded-stack"),
            "--log-dir",
            str(tmp_path / "logs"),
            *args,
            "--",
            *command,
        ],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(result.stdout, result.stderr[-3000:], sep="\n")
    return result


def lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("PASS", "FAIL"))]


@pytest.mark.timeout(200)
def test_the_receptionist_passes(stack_env: Environment, tmp_path: Path) -> None:
    """Both drains: the annotation (with a SIGTERM inside it), then SIGTERM alone."""
    result = conformance(stack_env, tmp_path, WORKER, timeout=190)
    assert result.returncode == 0, result.stdout
    steps = lines(result.stdout)
    assert steps and all(s.startswith("PASS") for s in steps), steps
    for name in (
        "reports starting at boot",
        "refuses a call beyond its capacity (2)",
        "takes call 2 of its capacity 2",
        "[the drain annotation] does not cut the call in progress",
        "[SIGTERM] exits 0 once its last call ended",
    ):
        assert any(name in s for s in steps), (name, steps)
    assert "conformance: PASSED" in result.stdout


@pytest.mark.timeout(150)
def test_the_example_booking_agent_passes(stack_env: Environment, tmp_path: Path) -> None:
    """The team agent on the same runtime; its SIGTERM drain is the runtime's, run above."""
    extra = [f"--env={k}={v}" for k, v in BOOKING_ENV.items()]
    result = conformance(stack_env, tmp_path, WORKER, *extra, "--no-sigterm-run", timeout=140)
    assert result.returncode == 0, result.stdout
    assert all(s.startswith("PASS") for s in lines(result.stdout))


@pytest.mark.timeout(90)
def test_a_worker_that_never_reports_fails_naming_the_missing_step(
    stack_env: Environment, tmp_path: Path
) -> None:
    """The stand-in registers with LiveKit (it would take calls) within the kit's 20 s for the
    first report, but writes nothing on its pod: the kit stops at the first step."""
    result = conformance(stack_env, tmp_path, NEVER_REPORTS, timeout=80)
    assert result.returncode == 1, result.stdout
    steps = lines(result.stdout)
    assert steps == [steps[0]] and steps[0].startswith("FAIL  reports starting at boot"), steps
    assert "missing step" in steps[0] and "voicepool.dev/state" in steps[0], steps
    assert "conformance: FAILED at 'reports starting at boot'" in result.stdout
    log = (tmp_path / "logs" / "worker-drain-annotation.log").read_text()
    assert "registered" in log.splitlines(), "the stand-in never registered with LiveKit"
