"""Debian packages the local stack needs (redis, containerd, libopus, ...), installed when missing.

One helper for every feature that needs a system package, so `make build` and `.ci/run` install
them the same way on a fresh machine, and a machine where we may not install (not root, no
apt-get, or ``VOICEPOOL_NO_APT=1``) gets one line naming the exact ``apt-get install`` to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Sequence

from .errors import DevstackError
from .progress import Progress

#: What the workers that the tests, the demo and the benches run on this host need beside
#: Python: ``espeak-ng`` for ``VOICEPOOL_TTS=espeak`` (the team desk of the control tests) and
#: the callers' second voice. The worker image installs it itself.
WORKER_HOST_PACKAGES = ("espeak-ng",)

_lock = threading.Lock()
_updated = False


def missing(packages: Sequence[str]) -> list[str]:
    """The packages of ``packages`` that dpkg does not report as installed."""
    if shutil.which("dpkg-query") is None:
        return list(packages)
    absent = []
    for name in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or "install ok installed" not in proc.stdout:
            absent.append(name)
    return absent


def _may_install() -> bool:
    return (
        os.environ.get("VOICEPOOL_NO_APT", "") not in ("1", "true", "yes")
        and shutil.which("apt-get") is not None
        and os.geteuid() == 0
    )


def ensure_packages(packages: Sequence[str], why: str, progress: Progress) -> None:
    """Install the missing ones of ``packages`` (needed for ``why``), or say how to."""
    global _updated
    with _lock:
        absent = missing(packages)
        if not absent:
            return
        command = "apt-get install -y " + " ".join(absent)
        if not _may_install():
            raise DevstackError(f"{why} needs Debian packages that are missing; run: {command}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if not _updated:
            progress("apt-get update (once, to install missing Debian packages) ...")
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
            _updated = True
        progress(f"{command}  (for {why}) ...")
        proc = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *absent],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise DevstackError(f"`{command}` failed (for {why}):\n{tail}")
        still = missing(absent)
        if still:
            raise DevstackError(f"`{command}` finished but {', '.join(still)} is still missing")
