"""``voicepool-operator``: run the kopf operator against $KUBECONFIG (or in-cluster config)."""

from __future__ import annotations

import argparse
import logging
import sys

import kopf
from prometheus_client import start_http_server


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
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--log-format", choices=["plain", "full", "json"], default="plain")
    args = parser.parse_args(argv)

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    from . import handlers  # noqa: F401  (registers the kopf handlers)

    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    try:
        kopf.run(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            priority=args.priority,
            liveness_endpoint=liveness,
        )
    except KeyboardInterrupt:
        return 130
    logging.getLogger(__name__).info("operator stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
