"""The Helm chart, installed for real into the test cluster.

- ``helm lint --strict`` and ``helm template`` are clean.
- ``helm install`` works; the operator then runs *as the chart's ServiceAccount* (a token from
  the TokenRequest API), which proves the least-privilege RBAC is enough to reconcile a pool.
- The ValidatingAdmissionPolicy lets a worker's pod-bound token patch only its own pod's
  reporting annotations.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from voicepool_devstack.kubeconfig import service_account_kubeconfig
from voicepool_devstack.testing import Environment, create_namespace, wait_for
from voicepool_devstack.versions import HELM

from .operator_harness import REPO, Cluster, pool_manifest, running_operator

ANN_SESSIONS = "voicepool.dev/sessions"

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "voicepool"
RELEASE, RELEASE_NS = "voicepool", "voicepool-system"
WORKER_SA = "voicepool-worker"


def helm(*args: str, kubeconfig: str | None = None) -> str:
    cmd = [str(HELM.path("helm")), *args]
    if kubeconfig:
        cmd += ["--kubeconfig", kubeconfig]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


def test_chart_lints_and_renders() -> None:
    helm("lint", str(CHART), "--strict")
    docs = [
        d
        for d in yaml.safe_load_all(
            helm(
                "template",
                RELEASE,
                str(CHART),
                "-n",
                RELEASE_NS,
                "--include-crds",
                "--kube-version",
                "1.34.4",
            )
        )
        if d
    ]
    kinds = {d["kind"] for d in docs}
    assert {
        "CustomResourceDefinition",
        "Deployment",
        "ClusterRole",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "Service",
        "ConfigMap",
        "ClusterKopfPeering",
    } <= kinds
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    crd_names = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    on_disk = {
        d["metadata"]["name"]
        for p in (REPO / "crds").glob("*.yaml")
        for d in yaml.safe_load_all(p.read_text())
        if d and d["kind"] == "CustomResourceDefinition"
    }
    assert crd_names == on_disk, "the chart ships crds/ itself: one source of truth"


def _render(*sets: str) -> list[dict]:
    args = ["template", RELEASE, str(CHART), "-n", RELEASE_NS, "--kube-version", "1.34.4"]
    for kv in sets:
        args += ["--set", kv]
    return [d for d in yaml.safe_load_all(helm(*args)) if d]


def test_the_webhook_port_is_exposed_when_enabled() -> None:
    """livekit-server needs a Service to post its webhooks to, and the operator the key."""
    off = _render()
    assert not [d for d in off if d["metadata"]["name"].endswith("-webhook")]
    docs = _render(
        "webhook.enabled=true", "webhook.port=8091", "webhook.credentialsSecretRef.name=lk"
    )
    svc = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-webhook")
    )
    assert svc["spec"]["ports"] == [{"name": "webhook", "port": 8091, "targetPort": "webhook"}]
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert "--webhook-port=8091" in container["args"]
    assert {"name": "webhook", "containerPort": 8091} in container["ports"]
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert env["LIVEKIT_API_KEY"] == {"name": "lk", "key": "apiKey"}
    assert env["LIVEKIT_API_SECRET"] == {"name": "lk", "key": "apiSecret"}
    # Enabled without the Secret: refused with the value to set.
    cmd = [str(HELM.path("helm")), "template", RELEASE, str(CHART), "--kube-version", "1.34.4"]
    cmd += ["--set", "webhook.enabled=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode != 0 and "webhook.credentialsSecretRef.name" in proc.stderr


PEERING = "voicepool-chart-test"


def test_bad_values_are_refused() -> None:
    proc = subprocess.run(
        [
            str(HELM.path("helm")),
            "template",
            RELEASE,
            str(CHART),
            "--kube-version",
            "1.34.4",
            "--set",
            "operator.logFormat=xml",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "logFormat" in proc.stderr


@pytest.fixture(scope="module")
def installed(stack_env: Environment, core: client.CoreV1Api) -> Iterator[None]:
    helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NS,
        "--create-namespace",
        "--wait=false",
        # Its own peering object: the other suites' operators use "voicepool".
        "--set",
        f"peering.name={PEERING}",
        kubeconfig=stack_env.kubeconfig,
    )
    try:
        yield
    finally:
        helm("uninstall", RELEASE, "-n", RELEASE_NS, kubeconfig=stack_env.kubeconfig)


def _token_kubeconfig(
    api: client.ApiClient, tmp: Path, namespace: str, sa: str, bound_pod: client.V1Pod | None = None
) -> str:
    """A kubeconfig that authenticates as a ServiceAccount with a TokenRequest token."""
    core = client.CoreV1Api(api)
    wait_for(
        lambda: core.read_namespaced_service_account(sa, namespace),
        timeout=30,
        what=f"ServiceAccount {sa}",
    )
    pod = (bound_pod.metadata.name, bound_pod.metadata.uid) if bound_pod is not None else None
    return service_account_kubeconfig(api, namespace, sa, tmp / f"{sa}.kubeconfig", pod=pod)


def test_operator_reconciles_with_the_charts_rbac(
    installed: None, api_client: client.ApiClient, core: client.CoreV1Api, tmp_path: Path
) -> None:
    kubeconfig = _token_kubeconfig(api_client, tmp_path, RELEASE_NS, f"{RELEASE}-operator")
    ns = RELEASE_NS
    cluster = Cluster(api_client, ns)
    with running_operator(kubeconfig, peering=PEERING):
        cluster.create_pool(pool_manifest("chart-pool", warmPool={"idleSessions": 2}))

        def populated() -> dict | None:
            st = cluster.pool("chart-pool").get("status", {})
            return st if st.get("readyPods") == 1 and st.get("conditions") else None

        status = wait_for(populated, timeout=60, what="pool status populated by the operator")
        assert status["desiredReplicas"] == 1
        cluster.delete_pool("chart-pool")
        wait_for(
            lambda: not cluster.pool_exists("chart-pool"),
            timeout=60,
            what="pool deleted through the finalizer",
        )


def test_worker_token_may_patch_only_its_own_pod(
    installed: None, api_client: client.ApiClient, core: client.CoreV1Api, tmp_path: Path
) -> None:
    ns = RELEASE_NS
    # An owner for the pods, so that dropping ownerReferences is a change a worker could try.
    owner = core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="worker-owner-"))
    )

    def pod(name: str) -> client.V1Pod:
        return core.create_namespaced_pod(
            ns,
            client.V1Pod(
                metadata=client.V1ObjectMeta(
                    name=name,
                    labels={"app": "w"},
                    annotations={"voicepool.dev/drain": "false"},
                    owner_references=[
                        client.V1OwnerReference(
                            api_version="v1",
                            kind="ConfigMap",
                            name=owner.metadata.name,
                            uid=owner.metadata.uid,
                            controller=True,
                        )
                    ],
                ),
                spec=client.V1PodSpec(
                    service_account_name=WORKER_SA,
                    containers=[client.V1Container(name="w", image="example.invalid/w")],
                ),
            ),
        )

    wait_for(
        lambda: core.read_namespaced_service_account(WORKER_SA, ns),
        timeout=30,
        what="worker ServiceAccount",
    )
    mine, other = pod("worker-a"), pod("worker-b")
    kubeconfig = _token_kubeconfig(api_client, tmp_path, ns, WORKER_SA, bound_pod=mine)
    from kubernetes import config as kconfig

    cfg = client.Configuration()
    kconfig.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    with client.ApiClient(cfg) as worker_api:
        as_worker = client.CoreV1Api(worker_api)

        def patch(name: str, body: object) -> None:
            as_worker.patch_namespaced_pod(name, ns, body)

        report = {
            "metadata": {
                "annotations": {
                    "voicepool.dev/sessions": "1",
                    "voicepool.dev/capacity": "2",
                    "voicepool.dev/state": "busy",
                    "voicepool.dev/reported-at": "2026-12-01T10:00:00Z",
                }
            }
        }
        patch("worker-a", report)  # exactly what a worker writes: allowed
        ann = core.read_namespaced_pod("worker-a", ns).metadata.annotations
        assert ann["voicepool.dev/sessions"] == "1" and ann["voicepool.dev/state"] == "busy"

        def denied(name: str, body: object) -> str:
            with pytest.raises(client.ApiException) as err:
                patch(name, body)
            assert err.value.status in (403, 422), err.value
            return str(err.value.body)

        def policy_denies() -> bool:
            try:
                patch("worker-b", {"metadata": {"annotations": {"voicepool.dev/sessions": "1"}}})
                return False
            except client.ApiException as e:
                return e.status in (403, 422)

        # Admission policies are loaded asynchronously: wait until the policy refuses.
        wait_for(policy_denies, timeout=30, what="admission policy active")
        attempts: list[tuple[str, str, object]] = [
            ("worker-own-pod", "worker-b", {"metadata": {"annotations": {ANN_SESSIONS: "2"}}}),
            (
                "worker-reports-only",
                "worker-a",
                {"metadata": {"annotations": {"voicepool.dev/drain": "true"}}},
            ),
            (
                "worker-reports-only",
                "worker-a",
                [{"op": "remove", "path": "/metadata/annotations/voicepool.dev~1drain"}],
            ),
            # the eviction hints are the operator's: a worker may not set them
            (
                "worker-reports-only",
                "worker-a",
                {
                    "metadata": {
                        "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"}
                    }
                },
            ),
            ("worker-labels-unchanged", "worker-a", {"metadata": {"labels": {"app": "x"}}}),
            (
                "worker-labels-unchanged",
                "worker-a",
                {"metadata": {"labels": {"voicepool.dev/busy": "false"}}},
            ),
            (
                "worker-spec-unchanged",
                "worker-a",
                {"spec": {"containers": [{"name": "w", "image": "evil.invalid/miner:latest"}]}},
            ),
            ("worker-spec-unchanged", "worker-a", {"spec": {"activeDeadlineSeconds": 5}}),
            (
                "worker-finalizers-unchanged",
                "worker-a",
                {"metadata": {"finalizers": ["evil.invalid/never-delete"]}},
            ),
            (
                "worker-owner-unchanged",
                "worker-a",
                [{"op": "remove", "path": "/metadata/ownerReferences"}],
            ),
        ]
        for rule, name, body in attempts:
            assert rule in denied(name, body), f"{rule} did not refuse {body}"
    after = core.read_namespaced_pod("worker-a", ns)
    assert after.spec.containers[0].image == "example.invalid/w"
    assert after.spec.active_deadline_seconds is None
    assert not after.metadata.finalizers
    assert after.metadata.owner_references[0].uid == owner.metadata.uid
    assert after.metadata.labels == {"app": "w"}
    assert other.metadata.name == "worker-b"
    for name in ("worker-a", "worker-b"):
        core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    core.delete_namespaced_config_map(owner.metadata.name, ns)


@pytest.mark.timeout(300)
def test_a_scoped_chart_in_a_restricted_namespace(
    stack_env: Environment, api_client: client.ApiClient, core: client.CoreV1Api, tmp_path: Path
) -> None:
    """watchNamespaces: the operator's rights are a Role in that namespace only, its own pod
    and the workers it creates pass Pod Security "restricted", and it reconciles with them."""
    tag = uuid.uuid4().hex[:6]
    restricted = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    ns = create_namespace(
        core, f"restricted-{tag}", worker_service_account=False, labels=restricted
    )
    other = create_namespace(core, f"elsewhere-{tag}")
    release = f"scoped-voicepool-{tag}"
    helm("install", release, str(CHART), "-n", ns, "--set", f"operator.watchNamespaces={{{ns}}}",
         "--set", f"peering.name={release}", "--set", "operator.replicas=1",
         "--set", "dashboard.enabled=false", "--wait=false",
         kubeconfig=stack_env.kubeconfig)  # fmt: skip
    try:
        docs = _render(f"operator.watchNamespaces={{{ns}}}")
        cluster_rules = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
        assert not [r for r in cluster_rules if {"secrets", "pods"} & set(r["resources"])]
        assert {d["kind"] for d in docs} >= {"Role", "RoleBinding", "KopfPeering"}

        def operator_pod() -> client.V1Pod | None:
            pods = core.list_namespaced_pod(
                ns, label_selector="app.kubernetes.io/component=operator"
            ).items
            return pods[0] if pods else None

        wait_for(operator_pod, timeout=60, what="the operator pod admitted under restricted")
        account = f"system:serviceaccount:{ns}:{release}-operator"
        authz = client.AuthorizationV1Api(api_client)

        def may(verb: str, resource: str, namespace: str) -> bool:
            review = client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=account,
                    groups=["system:serviceaccounts", f"system:serviceaccounts:{ns}"],
                    resource_attributes=client.V1ResourceAttributes(
                        verb=verb, resource=resource, namespace=namespace
                    ),
                )
            )
            return bool(authz.create_subject_access_review(review).status.allowed)

        wait_for(lambda: may("get", "secrets", ns), timeout=30, what="the namespaced Role")
        for verb, resource in (("get", "secrets"), ("create", "pods"), ("delete", "pods")):
            assert may(verb, resource, ns) and not may(verb, resource, other), (verb, resource)

        kubeconfig = service_account_kubeconfig(
            api_client, ns, f"{release}-operator", tmp_path / "operator.kubeconfig"
        )
        cluster = Cluster(api_client, ns)
        with running_operator(kubeconfig, peering=release, extra_args=(f"--namespace={ns}",)):
            cluster.create_pool(pool_manifest("restricted-pool", warmPool={"idleSessions": 2}))

            def served() -> dict | None:
                st = cluster.pool("restricted-pool").get("status", {})
                return st if st.get("readyPods") == 1 else None

            wait_for(served, timeout=90, what="a worker pod admitted under restricted")
            (pod,) = cluster.pods("restricted-pool")
            assert pod.spec.service_account_name == "voicepool-worker"
            cluster.delete_pool("restricted-pool")
            wait_for(lambda: not cluster.pool_exists("restricted-pool"), timeout=60, what="deleted")
    finally:
        helm("uninstall", release, "-n", ns, kubeconfig=stack_env.kubeconfig)
        core.delete_namespace(other, propagation_policy="Background")
        core.delete_namespace(ns, propagation_policy="Background")
