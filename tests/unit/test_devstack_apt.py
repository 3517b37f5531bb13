"""The Debian-package helper: what dpkg reports, and the message when it may not install."""

from __future__ import annotations

import pytest
from voicepool_devstack import apt
from voicepool_devstack.errors import DevstackError


def test_missing_reports_only_absent_packages() -> None:
    assert apt.missing(["dpkg", "voicepool-no-such-package"]) == ["voicepool-no-such-package"]


def test_refusal_names_the_exact_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEPOOL_NO_APT", "1")
    with pytest.raises(DevstackError, match=r"run: apt-get install -y voicepool-no-such-package"):
        apt.ensure_packages(["dpkg", "voicepool-no-such-package"], "a test", lambda _: None)


def test_nothing_to_do_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEPOOL_NO_APT", "1")
    apt.ensure_packages(["dpkg"], "a test", lambda _: None)
