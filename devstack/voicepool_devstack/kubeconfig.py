"""Kubeconfig files for the local stack's clients (admin, controller-manager, scheduler, kwok,
the real node's kubelet): one cluster, one certificate user, one context, readable by the owner
only. Certificates are embedded, so a kubeconfig works from any directory."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from .pki import CertPair

CLUSTER = "voicepool-devstack"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write(path: Path, server: str, ca: CertPair, user: CertPair, user_name: str) -> None:
    """Write a kubeconfig for ``user`` at ``server``.

    ``user_name`` is also the context's user: when the two differ, a kubelet silently runs as
    system:anonymous and gets 403s.
    """
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca.cert_pem())},
            }
        ],
        "users": [
            {
                "name": user_name,
                "user": {
                    "client-certificate-data": _b64(user.cert_pem()),
                    "client-key-data": _b64(user.key_pem()),
                },
            }
        ],
        "contexts": [
            {
                "name": CLUSTER,
                "context": {"cluster": CLUSTER, "user": user_name, "namespace": "default"},
            }
        ],
        "current-context": CLUSTER,
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
