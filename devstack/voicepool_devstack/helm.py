"""The helm CLI the chart tests and the demo install the chart with (kubectl comes with the
Kubernetes build, ``control_plane.py``); built from the module proxy like the servers."""

from __future__ import annotations

from .build import Builders, go_install
from .progress import Progress
from .versions import HELM


def _build(progress: Progress) -> None:
    go_install(HELM, "helm.sh/helm/v3/cmd/helm", progress)


def register(builders: Builders) -> None:
    # Beside the Kubernetes chain: its own module, and at the end of a cold build that chain's
    # last binaries (controller-manager, kubectl, kubelet) left a core idle ~30 % of 3.5 min
    # while helm waited its turn behind them.
    builders.register(HELM, _build, beside=True)
