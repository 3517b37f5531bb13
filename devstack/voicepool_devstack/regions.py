"""More stacks beside the default one: a second region with its own kube-apiserver and
livekit-server (``voicepool-devstack up --name b``, or ``NamedStack`` from tests and benches).

Every server of a stack takes free loopback ports and its own work directory, so any number of
stacks run side by side; a named stack only differs in being small by default (one kwok node,
no livekit-sip, no Prometheus: a routing region needs a cluster, a LiveKit and a pool) and in
being able to stop and restart its livekit-server on the same URL and keys, which is how a
region's LiveKit outage and recovery are played (docs/routing.md).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from voicepool_contract import GROUP, PLURAL

from . import livekit
from .errors import DevstackError
from .livekit import LiveKitInfo
from .progress import Progress, stderr_progress
from .stack import LocalStack, StackConfig, StackState
from .versions import REPO_ROOT

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
LIVEKIT_SERVER = "livekit-server"


def check_name(name: str) -> str:
    """A stack name: lowercase letters, digits and '-' (it names a directory and a region)."""
    if not NAME.match(name):
        raise DevstackError(
            f"stack name {name!r}: use 1-32 lowercase letters, digits or '-' (e.g. b, eu-west)"
        )
    return name


def named_dir(name: str) -> Path:
    """Where ``voicepool-devstack up --name <name>`` keeps its state: beside ``.devstack``,
    never inside it (``make cluster-down`` removes that)."""
    return REPO_ROOT / f".devstack-{check_name(name)}"


class NamedStack:
    """One more stack, for a second region. Use as a context manager."""

    def __init__(
        self,
        name: str,
        *,
        workdir: Path | None = None,
        kubernetes: bool = True,
        nodes: int = 1,
        sip: bool = False,
        prometheus: bool = False,
        progress: Progress = stderr_progress,
    ) -> None:
        self.name = check_name(name)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"voicepool-stack-{name}-"))
        self.stack = LocalStack(
            StackConfig(
                workdir=self.workdir,
                nodes=nodes,
                kubernetes=kubernetes,
                livekit=True,
                sip=sip,
                prometheus=prometheus,
                progress=lambda line: progress(f"[{self.name}] {line}"),
            )
        )
        self.state: StackState | None = None

    def __enter__(self) -> NamedStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> StackState:
        self.state = self.stack.start()
        return self.state

    def stop(self, remove: bool = True) -> None:
        self.stack.stop(remove=remove)

    @property
    def kubeconfig(self) -> str:
        if self.state is None or self.state.kubeconfig is None:
            raise DevstackError(f"stack {self.name} has no Kubernetes (started without it?)")
        return self.state.kubeconfig

    @property
    def livekit(self) -> LiveKitInfo:
        if self.state is None or self.state.livekit is None:
            raise DevstackError(f"stack {self.name} is not started")
        return self.state.livekit

    def stop_livekit(self) -> None:
        """Kill this stack's livekit-server, as a crash or a lost machine would: at once (on
        SIGTERM it would first drain its rooms for up to 10 s); its clients see connection
        refused."""
        self.stack.procs.stop(LIVEKIT_SERVER, grace=0.0)

    def start_livekit(self) -> None:
        """Start it again on the same URL with the same keys."""
        livekit.restart(self.stack.procs, self.livekit)


def reader_kubeconfig(api: ApiClient, admin_kubeconfig: str, namespace: str) -> str:
    """A self-contained kubeconfig for ``namespace`` of the cluster behind ``api`` that may only
    get, list and watch VoiceAgentPools there: a ServiceAccount token (TokenRequest) and the
    cluster's CA inline. What a platform team puts in a region's kubeconfig Secret."""
    from kubernetes import client

    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    name = "voicepool-route-reader"
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name=name),
            rules=[
                client.V1PolicyRule(
                    api_groups=[GROUP], resources=[PLURAL], verbs=["get", "list", "watch"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name=name
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)],
        ),
    )
    spec = client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    status = core.create_namespaced_service_account_token(
        name, namespace, client.AuthenticationV1TokenRequest(spec=spec)
    ).status
    if status is None or not status.token:
        raise DevstackError("the apiserver issued no ServiceAccount token")
    token = status.token
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "region",
            "clusters": [
                {
                    "name": "region",
                    "cluster": {
                        "server": cluster["server"],
                        "certificate-authority-data": cluster["certificate-authority-data"],
                    },
                }
            ],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "region", "context": {"cluster": "region", "user": name}}],
        }
    )
