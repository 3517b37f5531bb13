"""``voicepool-operator``: run the kopf operator against $KUBECONFIG (or in-cluster config)."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
import sys
import time

import kopf
from kopf._core.engines import peering
from prometheus_client import start_http_server

from .policy import DEFAULT_WORKER_SERVICE_ACCOUNT, WorkerPolicy


def seniority_priority(start_ns: int | None = None) -> int:
    """A kopf peering priority that makes the longest-running replica the active one.

    kopf pauses every replica that sees a live peer of higher *or equal* priority, so replicas
    with the same fixed priority would all stand still. Minus the start time in microseconds
    is distinct per replica and higher for older ones: a restarted or newly scheduled replica
    waits behind the one already working instead of taking over mid-reconcile.
    """
    return -((time.time_ns() if start_ns is None else start_ns) // 1000)


def peer_identity() -> str:
    """This replica's kopf peer id: the pod name (or host) plus a random part.

    kopf's default asks ``getpass.getuser()``, which raises in a container whose uid has no
    passwd entry -- the chart runs the image as 65532, so the operator crashed at start on a
    real kubelet (kwok never ran the container).
    """
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}/{os.getpid()}-{secrets.token_hex(3)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voicepool-operator", description=__doc__)
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="serve only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0 disables)"
    )
    parser.add_argument("--metrics-address", default="0.0.0.0")
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=8080,
        help="kopf liveness probe port, serves /healthz (0 disables)",
    )
    parser.add_argument(
        "--peering",
        default="voicepool",
        help="kopf peering object name (one active replica at a time)",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: only for development with a single replica",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="kopf peering priority; default: by seniority (the oldest replica is active)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=15,
        help="seconds until a silent (killed) replica's peering record expires and a standby "
        "takes over; replicas refresh theirs every few seconds",
    )
    parser.add_argument(
        "--webhook-port",
        type=int,
        default=0,
        help="serve LiveKit's webhook (POST /livekit/webhook) on this port, so a caller "
        "waiting in a room for a pool with no pods starts one at once; signatures are "
        "checked with $LIVEKIT_API_KEY/$LIVEKIT_API_SECRET (0 disables)",
    )
    parser.add_argument("--webhook-address", default="0.0.0.0")
    parser.add_argument(
        "--webhook-max-age",
        type=float,
        default=300.0,
        help="refuse LiveKit webhook events created longer ago than this many seconds "
        "(a captured event cannot be replayed later)",
    )
    policy = parser.add_argument_group(
        "worker policy", "what a pool author may ask of worker pods (docs/security.md)"
    )
    policy.add_argument(
        "--worker-service-account",
        default=DEFAULT_WORKER_SERVICE_ACCOUNT,
        help="ServiceAccount of worker pods whose pool names none (the chart's worker "
        "ServiceAccount, which may patch only its own pod's reports)",
    )
    policy.add_argument(
        "--allow-service-account",
        action="append",
        default=[],
        metavar="NAME",
        help="a further ServiceAccount pools may name (repeatable); any other is refused",
    )
    policy.add_argument(
        "--allow-host-network",
        action="store_true",
        help="let pools run workers in the node's network namespace (template.hostNetwork)",
    )
    policy.add_argument(
        "--allow-image-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="worker images must start with one of these (repeatable); default: any image",
    )
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--log-format", choices=["plain", "full", "json"], default="plain")
    args = parser.parse_args(argv)
    if args.peering_lifetime < 10:
        parser.error("--peering-lifetime must be >= 10 (kopf refreshes 5-10 s before expiry)")

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    from . import handlers  # noqa: F401  (register the kopf handlers: pools and pods)
    from .routing import handlers as routing  # noqa: F401  (VoiceRoutes: docs/routing.md)
    from .telephony import handlers as telephony_handlers  # noqa: F401  (SIP cleanup)

    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    try:
        kopf.run(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            priority=seniority_priority() if args.priority is None else args.priority,
            identity=peering.Identity(peer_identity()),
            liveness_endpoint=liveness,
            memo=kopf.Memo(
                peering_lifetime=args.peering_lifetime,
                webhook_port=args.webhook_port,
                webhook_address=args.webhook_address,
                namespaces=list(args.namespace or ()),
                webhook_max_age=args.webhook_max_age,
                policy=WorkerPolicy(
                    default_service_account=args.worker_service_account,
                    allowed_service_accounts=frozenset(args.allow_service_account),
                    allow_host_network=args.allow_host_network,
                    allowed_image_prefixes=tuple(args.allow_image_prefix),
                ),
            ),
        )
    except KeyboardInterrupt:
        return 130
    logging.getLogger(__name__).info("operator stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
