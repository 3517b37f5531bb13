"""The shared names agree with the chart: the admission policy allows exactly the reports."""

from __future__ import annotations

import re
from pathlib import Path

import voicepool_contract as contract
from voicepool_operator import constants
from voicepool_worker.runtime import sessions

CHART = Path(__file__).resolve().parents[2] / "charts" / "voicepool" / "templates"


def test_the_policy_allows_exactly_the_reported_annotations() -> None:
    policy = (CHART / "admission-policy.yaml").read_text()
    allowed = policy.split("- name: allowed", 1)[1].split("- name:", 1)[0]
    assert tuple(re.findall(r"'([^']+)'", allowed)) == contract.REPORTED_KEYS


def test_operator_and_worker_use_the_contracts_names() -> None:
    for name in ("ANN_SESSIONS", "ANN_STATE", "ANN_DRAIN", "ANN_DRAIN_REASON", "ANN_CAPACITY"):
        assert getattr(constants, name) is getattr(contract, name)
        assert getattr(sessions, name) is getattr(contract, name)
    assert sessions.REPORTED_KEYS is contract.REPORTED_KEYS
    assert constants.LABEL_BUSY == "voicepool.dev/busy"
