"""Prometheus metrics of routing: the operator's view of each region, and the router's calls."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

# -- the operator (per VoiceRoute and region) ----------------------------------------------
REGION_READY = Gauge(
    "voicepool_route_region_ready",
    "1 while a route's region can take calls (reachable, pool found), else 0",
    ["namespace", "route", "region"],
)
REGION_IDLE = Gauge(
    "voicepool_route_region_idle_sessions",
    "Idle sessions of a route's region as the operator last saw its pool",
    ["namespace", "route", "region"],
)

# -- voicepool-router ------------------------------------------------------------------------
ROUTED = Counter(
    "voicepool_router_routed_total",
    "Sessions (kind=session) and phone calls (kind=call) placed, per route and region",
    ["route", "region", "kind"],
)
FAILOVERS = Counter(
    "voicepool_router_failovers_total",
    "A region given up for the next one within one request, per route, region and cause "
    "(NotAccepted, LiveKitUnreachable, LiveKitKeyRejected, ...)",
    ["route", "region", "cause"],
)
TRUNK_FAILOVERS = Counter(
    "voicepool_router_trunk_failovers_total",
    "An outbound trunk skipped for the next one (5xx or timeout), per region and trunk",
    ["region", "trunk"],
)
REJECTED = Counter(
    "voicepool_router_rejected_total",
    "Requests not placed, by reason: full (every region full: 503), unavailable (every "
    "region tried failed: 503), unauthorized (401), bad_request, not_found, call_failed",
    ["reason"],
)
ROUTING_SECONDS = Histogram(
    "voicepool_router_routing_seconds",
    "Request received -> answer sent for placed sessions and calls (room, dispatch accepted, "
    "token; for calls also the dial until answered)",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def forget_route(namespace: str, route: str, regions: list[str]) -> None:
    """Drop a deleted route's (or removed region's) series."""
    for region in regions:
        for gauge in (REGION_READY, REGION_IDLE):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, route, region)
