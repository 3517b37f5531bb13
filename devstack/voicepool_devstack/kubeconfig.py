"""Kubeconfig files for the local stack's clients (admin, controller-manager, scheduler, kwok,
the real node's kubelet): one cluster, one certificate user, one context, readable by the owner
only. Certificates are embedded, so a kubeconfig works from any directory."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .pki import CertPair

if TYPE_CHECKING:
    from kubernetes import client

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


def service_account_kubeconfig(
    api: client.ApiClient,
    namespace: str,
    account: str,
    path: Path,
    *,
    pod: tuple[str, str] | None = None,
    expiration_seconds: int = 3600,
) -> str:
    """A kubeconfig at ``path`` that authenticates as ``namespace/account``, as the kubelet
    gives a pod its token: a TokenRequest, bound to ``pod`` (name, uid) when given, so the
    apiserver (and an admission policy) knows which pod the caller is."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(api)
    spec = k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
    if pod is not None:
        spec.bound_object_ref = k8s.V1BoundObjectReference(
            kind="Pod", api_version="v1", name=pod[0], uid=pod[1]
        )
    status = core.create_namespaced_service_account_token(
        account, namespace, k8s.AuthenticationV1TokenRequest(spec=spec)
    ).status
    assert status is not None and status.token, "the apiserver issued no token"
    token = status.token
    cfg = api.configuration
    cluster: dict[str, object] = {"server": cfg.host}
    if cfg.ssl_ca_cert:
        cluster["certificate-authority"] = str(cfg.ssl_ca_cert)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "sa",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": account}}],
            }
        )
    )
    path.chmod(0o600)
    return str(path)
