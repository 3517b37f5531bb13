"""Bad input for the real node that needs no node: missing Debian packages say what to run."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from voicepool_devstack import apt, images, node
from voicepool_devstack.errors import DevstackError


@pytest.fixture()
def nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without the node's packages where we may not install (VOICEPOOL_NO_APT)."""
    monkeypatch.setenv("VOICEPOOL_NO_APT", "1")

    def missing(packages: Sequence[str]) -> list[str]:
        return list(packages)

    monkeypatch.setattr(apt, "missing", missing)


@pytest.mark.usefixtures("nothing_installed")
def test_node_without_containerd_names_the_apt_get_install() -> None:
    with pytest.raises(DevstackError, match=r"run: apt-get install -y containerd runc$"):
        node.ensure_node_artifacts(lambda _: None)


@pytest.mark.usefixtures("nothing_installed")
def test_image_builds_without_their_tools_name_the_apt_get_install() -> None:
    with pytest.raises(DevstackError) as err:
        images.ensure_images(lambda _: None)
    assert "run: apt-get install -y mmdebstrap buildah gcc libc6-dev" in str(err.value)
    assert "building the real node's images" in str(err.value)


def test_no_apt_get_and_no_containerd_is_a_skip_reason_with_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where apt-get itself is missing the suite skips, and the reason says what to install."""
    monkeypatch.delenv("VOICEPOOL_NO_NODE", raising=False)
    monkeypatch.setattr(node.os, "geteuid", lambda: 0)
    monkeypatch.setattr(node.shutil, "which", lambda name: None)
    monkeypatch.setattr(apt, "missing", lambda packages: list(packages))
    reason = node.unsupported_reason(check_lock=False)
    assert reason is not None and "apt-get install -y containerd runc" in reason


def test_teardown_does_not_retry_deleting_tasks_that_are_already_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """containerd reaps a SIGKILLed task at once: its delete says "not found", which is done
    (retrying it until the 10 s deadline made every `down` with a pod 10 s slower)."""
    import subprocess

    calls: list[tuple[str, ...]] = []
    live = {"a", "b"}

    def fake_ctr(socket: str, *args: str) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        out, err, rc = "", "", 0
        if args[:2] == ("tasks", "ls"):
            out = "\n".join(sorted(live))
        elif args[:2] == ("tasks", "kill"):
            live.discard(args[-1])  # reaped as soon as it is killed
        elif args[:2] == ("tasks", "delete"):
            err, rc = f"ctr: no running task found: task {args[-1]} not found: not found", 1
        return subprocess.CompletedProcess(["ctr", *args], rc, out, err)

    monkeypatch.setattr(node, "ctr", fake_ctr)
    node._remove_containers("/run/x.sock")
    deletes = [c for c in calls if c[:2] == ("tasks", "delete")]
    assert sorted(c[-1] for c in deletes) == ["a", "b"], calls
