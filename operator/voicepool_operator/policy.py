"""What a pool author may ask of worker pods, as the cluster's operator allows it (pure).

A VoiceAgentPool makes the operator create pods, so without limits a pool would be "create
any pod" for whoever may write pools: any ServiceAccount of the namespace (and its token's
rights), the node's network, any image. The chart's values set this policy; the operator
refuses a pool that steps outside it (``Degraded``, the reason naming the field) and creates
nothing for it. Pools that name no ServiceAccount get the chart's worker ServiceAccount, the
one that may patch its own pod's reports (so the operator sees their calls).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .spec import PoolSpec

#: The chart's worker ServiceAccount (charts/voicepool values: worker.serviceAccount.name).
DEFAULT_WORKER_SERVICE_ACCOUNT = "voicepool-worker"


@dataclass(frozen=True)
class WorkerPolicy:
    default_service_account: str = DEFAULT_WORKER_SERVICE_ACCOUNT
    #: ServiceAccounts a pool may name; empty means only the default one.
    allowed_service_accounts: frozenset[str] = field(default_factory=frozenset)
    allow_host_network: bool = False
    #: Image prefixes a pool may run (e.g. ``registry.example.com/voice/``); empty: any image.
    allowed_image_prefixes: tuple[str, ...] = ()

    @property
    def service_accounts(self) -> frozenset[str]:
        return self.allowed_service_accounts | {self.default_service_account}


@dataclass(frozen=True)
class Refusal:
    """Why a pool may not run: a CamelCase reason and a message naming the field."""

    reason: str
    message: str


def service_account(spec: PoolSpec, policy: WorkerPolicy) -> str:
    """The ServiceAccount worker pods run as: the pool's own choice, else the default."""
    return spec.service_account or policy.default_service_account


def check(spec: PoolSpec, policy: WorkerPolicy) -> Refusal | None:
    """None when the pool's pods are within the policy, else the first thing that is not."""
    account = service_account(spec, policy)
    if account not in policy.service_accounts:
        allowed = ", ".join(sorted(policy.service_accounts))
        return Refusal(
            "ServiceAccountNotAllowed",
            f"spec.template.serviceAccountName: {account!r} is not one the operator may give "
            f"worker pods (allowed: {allowed}; chart value workerPolicy.serviceAccounts)",
        )
    if spec.host_network and not policy.allow_host_network:
        return Refusal(
            "HostNetworkNotAllowed",
            "spec.template.hostNetwork: worker pods may not use the node's network here "
            "(chart value workerPolicy.allowHostNetwork)",
        )
    image = str(spec.template.get("image") or "")
    prefixes = policy.allowed_image_prefixes
    if prefixes and not any(image.startswith(p) for p in prefixes):
        return Refusal(
            "ImageNotAllowed",
            f"spec.template.image: {image[:200]!r} is not under an allowed prefix "
            f"({', '.join(prefixes)}; chart value workerPolicy.imagePrefixes)",
        )
    return None
