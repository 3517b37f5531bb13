"""A VoiceRoute's spec as typed, validated data.

The CRD refuses bad routes at the apiserver; this re-checks everything the operator and the
router act on, so a route stored before a schema change (or applied with validation off) is
``Degraded``/``InvalidSpec`` with one message naming the field, and nothing is read. Secret
names are names in the route's own namespace (the same rule as a pool's): they become one
quoted API path segment and never a path. A pool in this cluster must be in the route's own
namespace too -- a route author may not read another team's pool through the operator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voicepool_contract.phone import PhoneSettingError, parse_destinations

from ..validate import DNS1123_SUBDOMAIN, SpecError, local_object_name, secret_key

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_REGIONS = 16
MAX_TRUNKS = 8


class RouteSpecError(ValueError):
    """A route the operator or router cannot act on; the message names the field."""


@dataclass(frozen=True)
class SecretKeys:
    """A Secret of the route's namespace and the keys read from it."""

    name: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class PoolRef:
    namespace: str
    name: str
    #: A Secret (and key) with the kubeconfig of the pool's cluster; None: this cluster.
    kubeconfig: SecretKeys | None = None

    @property
    def remote(self) -> bool:
        return self.kubeconfig is not None


@dataclass(frozen=True)
class RegionSpec:
    name: str
    priority: int
    weight: int
    livekit_url: str
    credentials: SecretKeys  # keys: (api key key, api secret key)
    pool: PoolRef
    outbound_trunks: tuple[str, ...] = ()

    @property
    def livekit_http_url(self) -> str:
        """The API URL of the region's LiveKit (the client URL with http(s))."""
        return http_url(self.livekit_url)


@dataclass(frozen=True)
class RouteSpec:
    regions: tuple[RegionSpec, ...]
    accept_timeout_s: float = 3.0
    room_empty_timeout_s: int = 120
    allowed_destinations: tuple[str, ...] = ()
    ringing_timeout_s: int = 30
    probe_interval_s: float = 5.0

    def region(self, name: str) -> RegionSpec | None:
        return next((r for r in self.regions if r.name == name), None)


def http_url(ws_url: str) -> str:
    """ws(s)://host -> http(s)://host: where LiveKit's server API listens."""
    if ws_url.startswith("wss://"):
        return "https://" + ws_url[len("wss://") :]
    if ws_url.startswith("ws://"):
        return "http://" + ws_url[len("ws://") :]
    return ws_url


def _name(value: Any, where: str, pattern: re.Pattern[str] = DNS1123_SUBDOMAIN) -> str:
    name = str(value or "")
    if len(name) > 253 or not pattern.match(name):
        raise RouteSpecError(
            f"{where}: {name[:80]!r} is not a valid name (lowercase letters, digits, '-' and "
            "'.'; no '/' or '..')"
        )
    return name


def _secret_name(value: Any, where: str) -> str:
    try:
        return local_object_name(value, where, owner="route")
    except SpecError as e:
        raise RouteSpecError(str(e)) from None


def _key(value: Any, default: str, where: str) -> str:
    try:
        return secret_key(value, default, where)
    except SpecError as e:
        raise RouteSpecError(str(e)) from None


def _int(obj: Mapping[str, Any], key: str, default: int, lo: int, hi: int, where: str) -> int:
    value = obj.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RouteSpecError(f"{where}.{key}: {value!r} must be an integer in [{lo}, {hi}]")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RouteSpecError(f"{where}: must be an object")
    return value


def _region(raw: Any, i: int, namespace: str) -> RegionSpec:
    where = f"spec.regions[{i}]"
    item = _mapping(raw, where)
    name = _name(item.get("name"), f"{where}.name", _LABEL)
    if len(name) > 63:
        raise RouteSpecError(f"{where}.name: at most 63 characters")
    where = f"spec.regions[{name}]"
    livekit = _mapping(item.get("livekit"), f"{where}.livekit")
    url = str(livekit.get("url") or "")
    if not url.startswith(("ws://", "wss://")) or len(url) > 2048:
        raise RouteSpecError(f"{where}.livekit.url: {url[:80]!r} must start with ws:// or wss://")
    ref = _mapping(livekit.get("credentialsSecretRef"), f"{where}.livekit.credentialsSecretRef")
    cred_where = f"{where}.livekit.credentialsSecretRef"
    credentials = SecretKeys(
        _secret_name(ref.get("name"), f"{cred_where}.name"),
        (
            _key(ref.get("apiKeyKey"), "apiKey", f"{cred_where}.apiKeyKey"),
            _key(ref.get("apiSecretKey"), "apiSecret", f"{cred_where}.apiSecretKey"),
        ),
    )
    pool_raw = _mapping(item.get("pool"), f"{where}.pool")
    kube_raw = pool_raw.get("kubeconfigSecretRef")
    kubeconfig = None
    if kube_raw is not None:
        kube = _mapping(kube_raw, f"{where}.pool.kubeconfigSecretRef")
        kubeconfig = SecretKeys(
            _secret_name(kube.get("name"), f"{where}.pool.kubeconfigSecretRef.name"),
            (_key(kube.get("key"), "kubeconfig", f"{where}.pool.kubeconfigSecretRef.key"),),
        )
    pool_ns = namespace
    if pool_raw.get("namespace") not in (None, ""):
        pool_ns = _name(pool_raw["namespace"], f"{where}.pool.namespace", _LABEL)
        if kubeconfig is None and pool_ns != namespace:
            raise RouteSpecError(
                f"{where}.pool.namespace: {pool_ns!r} is another namespace of this cluster; a "
                f"route may only name pools of its own namespace ({namespace!r}) here"
            )
    pool = PoolRef(pool_ns, _name(pool_raw.get("name"), f"{where}.pool.name"), kubeconfig)
    trunks_raw = item.get("outboundTrunks") or ()
    if not isinstance(trunks_raw, Sequence) or isinstance(trunks_raw, str):
        raise RouteSpecError(f"{where}.outboundTrunks: must be a list of trunk names")
    trunks = tuple(str(t) for t in trunks_raw)
    if len(trunks) > MAX_TRUNKS or any(not t or len(t) > 256 for t in trunks):
        raise RouteSpecError(
            f"{where}.outboundTrunks: at most {MAX_TRUNKS} names of 1-256 characters"
        )
    if len(set(trunks)) != len(trunks):
        raise RouteSpecError(f"{where}.outboundTrunks: a trunk is listed twice")
    return RegionSpec(
        name=name,
        priority=_int(item, "priority", 0, 0, 1000, where),
        weight=_int(item, "weight", 100, 1, 10000, where),
        livekit_url=url,
        credentials=credentials,
        pool=pool,
        outbound_trunks=trunks,
    )


def parse_route(spec: Mapping[str, Any], namespace: str) -> RouteSpec:
    """Validate and type a VoiceRoute's spec (CRD defaults applied where the apiserver did not).

    ``namespace`` is the route's own: Secrets are read there, and a pool of this cluster must
    be there.
    """
    regions_raw = spec.get("regions")
    if not isinstance(regions_raw, Sequence) or isinstance(regions_raw, str) or not regions_raw:
        raise RouteSpecError("spec.regions: at least one region is required")
    if len(regions_raw) > MAX_REGIONS:
        raise RouteSpecError(f"spec.regions: at most {MAX_REGIONS} regions")
    regions = tuple(_region(r, i, namespace) for i, r in enumerate(regions_raw))
    names = [r.name for r in regions]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RouteSpecError(f"spec.regions: region name(s) {dupes} listed twice")
    dispatch = _mapping(spec.get("dispatch"), "spec.dispatch")
    calls = _mapping(spec.get("calls"), "spec.calls")
    try:
        prefixes = parse_destinations(
            [str(p) for p in calls.get("allowedDestinations") or ()],
            setting="spec.calls.allowedDestinations",
        )
    except PhoneSettingError as e:
        raise RouteSpecError(str(e)) from None
    return RouteSpec(
        regions=regions,
        accept_timeout_s=_int(
            dispatch, "acceptTimeoutMilliseconds", 3000, 100, 30000, "spec.dispatch"
        )
        / 1000.0,
        room_empty_timeout_s=_int(
            dispatch, "roomEmptyTimeoutSeconds", 120, 10, 86400, "spec.dispatch"
        ),
        allowed_destinations=prefixes,
        ringing_timeout_s=_int(calls, "ringingTimeoutSeconds", 30, 1, 180, "spec.calls"),
        probe_interval_s=float(_int(spec, "probeIntervalSeconds", 5, 1, 300, "spec")),
    )
