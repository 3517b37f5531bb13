"""The chart's voicepool-router (docs/routing.md), rendered: two replicas of the operator image
running ``voicepool-router``, the bearer token from a Secret, rights only in its namespace; and
the operator's rights on VoiceRoutes."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml
from voicepool_devstack.versions import HELM

from .test_chart import CHART, RELEASE, RELEASE_NS, helm


def render(*sets: str) -> list[dict[str, Any]]:
    args = ["template", RELEASE, str(CHART), "-n", RELEASE_NS, "--kube-version", "1.34.4"]
    for kv in sets:
        args += ["--set", kv]
    return [d for d in yaml.safe_load_all(helm(*args)) if d]


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix))


def test_the_router_is_off_by_default_and_two_replicas_when_enabled() -> None:
    assert not [d for d in render() if d["metadata"]["name"].endswith("-router")]
    docs = render(
        "router.enabled=true",
        "router.tokenSecretRef.name=router-token",
        "router.namespace=voice",
        "router.livekitSecrets={livekit-eu,livekit-us}",
    )
    deploy = named(docs, "Deployment", "-router")
    assert deploy["spec"]["replicas"] == 2
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["voicepool-router"] and "--namespace=voice" in c["args"]
    assert c["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "router-token", "key": "token"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    role = named(docs, "Role", "-router")
    assert role["metadata"]["namespace"] == "voice"
    rules = {r["resources"][0]: r for r in role["rules"]}
    assert rules["voiceroutes"]["verbs"] == ["get", "list", "watch"]
    assert rules["secrets"]["verbs"] == ["get"]
    assert rules["secrets"]["resourceNames"] == ["livekit-eu", "livekit-us"]
    assert not [d for d in docs if d["kind"] == "ClusterRole" and "router" in d["metadata"]["name"]]
    svc = named(docs, "Service", "-router")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8088, "targetPort": "http"}]
    helm("lint", str(CHART), "--strict", "--set", "router.enabled=true", "--set",
         "router.tokenSecretRef.name=t")  # fmt: skip


def test_the_router_needs_its_token_secret() -> None:
    cmd = [str(HELM.path("helm")), "template", RELEASE, str(CHART), "--kube-version", "1.34.4"]
    proc = subprocess.run(
        [*cmd, "--set", "router.enabled=true"], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0 and "router.tokenSecretRef.name" in proc.stderr


def test_the_operator_may_write_route_status() -> None:
    for sets in ((), ("operator.watchNamespaces={voice}",)):
        docs = render(*sets)
        rules = [
            r
            for d in docs
            if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"].endswith("-operator")
            for r in d["rules"]
        ]
        verbs: dict[str, set[str]] = {}
        for r in rules:
            for res in r["resources"]:
                verbs.setdefault(res, set()).update(r["verbs"])
        assert {"get", "list", "watch", "patch"} <= verbs["voiceroutes"], sets
        assert {"patch"} <= verbs["voiceroutes/status"], sets
