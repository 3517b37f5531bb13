"""``voicepool-devstack``: build, start and stop the embedded local stack from a shell.

``up`` leaves the servers running in the background (their process groups are recorded in
``<dir>/state.json``) and prints how to use them; ``down`` stops them and removes ``<dir>``.
``conformance -- CMD...`` checks a worker command against the pool's contract
(docs/worker-contract.md) on that stack, or on a temporary one when none is up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import apt, node, prometheus
from .errors import DevstackError
from .progress import stderr_progress
from .regions import check_name, named_dir
from .stack import STATE_FILE, LocalStack, StackConfig, builders
from .versions import ALL_COMPONENTS, KUBELET, REPO_ROOT


def _default_dir() -> Path:
    return REPO_ROOT / ".devstack"


def _stack_name(value: str) -> str:
    try:
        return check_name(value)
    except DevstackError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _workdir(args: argparse.Namespace) -> Path:
    """``--dir``, else ``.devstack-<name>`` for a named (second) stack, else ``.devstack``."""
    if args.dir:
        return Path(args.dir).resolve()
    return named_dir(args.name) if args.name else _default_dir()


def _up(args: argparse.Namespace) -> int:
    workdir = _workdir(args)
    if (workdir / STATE_FILE).exists():
        raise DevstackError(
            f"a stack is already recorded in {workdir}; run `make cluster-down` "
            f"(voicepool-devstack down --dir {workdir}) first"
        )
    if args.name and args.node:
        raise DevstackError("--node: the real node runs only in the default stack")
    stack = LocalStack(
        StackConfig(
            workdir=workdir,
            nodes=args.nodes,
            livekit=not args.no_livekit,
            prometheus=not args.no_prometheus,
            sip=not args.no_sip,
            node=args.node,
        )
    )
    state = stack.start()
    print(f"\nLocal stack is up (state in {workdir / STATE_FILE}).")
    if state.kubeconfig:
        print(f"  export KUBECONFIG={state.kubeconfig}")
        print(
            "  kubectl get nodes"
            + ("   # kwok nodes + the real node 'localhost'" if args.node else "")
        )
    if state.livekit:
        print(f"  LiveKit: {state.livekit.url}  (key/secret in {workdir / 'livekit.env'})")
    if state.prometheus:
        print(f"  Prometheus: {state.prometheus.url}  (targets in {state.prometheus.targets_dir})")
    if state.sip:
        print(f"  LiveKit SIP: sip:{state.sip.address} (TCP/UDP; see docs/telephony.md)")
    if args.name:
        print(f"Stop it with: voicepool-devstack down --name {args.name}")
    else:
        print("Stop it with: make cluster-down")
    return 0


def _down(args: argparse.Namespace) -> int:
    workdir = _workdir(args)
    state_path = workdir / STATE_FILE
    if not state_path.exists():
        print(f"no stack recorded in {workdir}; nothing to stop")
        return 0
    LocalStack.recorded(workdir).stop()
    print(f"stopped the local stack and removed {workdir}")
    return 0


def _build(args: argparse.Namespace) -> int:
    apt.ensure_packages(
        apt.WORKER_HOST_PACKAGES, "workers on this host (espeak TTS)", stderr_progress
    )
    reason = "--no-node" if args.no_node else node.unsupported_reason(check_lock=False)
    registry = builders()
    images = None
    if reason:
        registry.ensure_built(ALL_COMPONENTS)
    else:  # the node's image builds run beside the Go builds
        images = node.ensure_node_artifacts(
            go_first=lambda: registry.ensure_built(ALL_COMPONENTS), builders=registry
        )
    try:
        prometheus.ensure_installed(stderr_progress)
    except DevstackError as e:  # monitoring is optional: say so, build the rest
        print(f"voicepool-devstack: warning: {e}", file=sys.stderr)
    for c in ALL_COMPONENTS:
        print(f"{c.name} {c.version}: {c.directory}")
    if images is None:
        print(f"real node: skipped ({reason}); its tests will skip too")
    else:
        print(f"{KUBELET.name} {KUBELET.version}: {KUBELET.directory}")
        for image in images.all():
            print(f"image {image.ref}: {image.size_bytes / 1e6:.0f} MB ({image.archive})")
    return 0


def _env_pair(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{value!r} is not KEY=VALUE")
    return key, val


def _conformance(args: argparse.Namespace) -> int:
    from . import conformance

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise DevstackError("conformance: give the worker's command after --")
    if args.capacity < 1:
        raise DevstackError("conformance: --capacity must be 1 or more")
    opts = conformance.Options(
        command=command,
        capacity=args.capacity,
        extra_env=dict(args.env),
        boot_timeout_s=args.boot_timeout,
        first_report_within_s=args.first_report_within,
        sigterm_run=not args.no_sigterm_run,
        log_dir=Path(args.log_dir).resolve() if args.log_dir else None,
    )
    if opts.log_dir is not None:
        opts.log_dir.mkdir(parents=True, exist_ok=True)
    return conformance.run(opts, _workdir(args), sys.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voicepool-devstack", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build (once) and start the stack in the background")
    up.add_argument("--dir", help="its state directory (default .devstack, or .devstack-<name>)")
    up.add_argument(
        "--name",
        type=_stack_name,
        help="a further, named stack beside the default one (a second region: its own "
        "kube-apiserver and livekit-server on other loopback ports; docs/routing.md)",
    )
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--no-livekit", action="store_true")
    up.add_argument(
        "--no-prometheus", action="store_true", help="skip Prometheus (monitoring is optional)"
    )
    up.add_argument(
        "--no-sip", action="store_true", help="skip redis + livekit-sip (no phone calls)"
    )
    up.add_argument(
        "--node",
        action="store_true",
        help="also start one real node (containerd + kubelet) running the project's images",
    )
    up.set_defaults(func=_up)
    down = sub.add_parser("down", help="stop a stack started with `up` and remove its dir")
    down.add_argument("--dir")
    down.add_argument("--name", type=_stack_name, help="the named stack to stop")
    down.set_defaults(func=_down)
    build = sub.add_parser("build", help="only build/cached-check the pinned binaries")
    build.add_argument(
        "--no-node", action="store_true", help="skip the real node's kubelet and images"
    )
    build.set_defaults(func=_build)
    conf = sub.add_parser(
        "conformance",
        help="check a worker command against the worker contract (docs/worker-contract.md)",
        description="Run CMD as a worker pod would run (the operator's environment, a Pod "
        "object to report on) against the stack's kube-apiserver and livekit-server, place "
        "calls and drain it; one line per step, exit 1 at the first failure. Commands only: "
        "to check an image, run its entrypoint here (the kit starts no container).",
    )
    conf.add_argument(
        "--dir",
        help="a stack started with `up` (default .devstack; else a "
        "temporary stack, or VOICEPOOL_KUBECONFIG/VOICEPOOL_LIVEKIT_*)",
    )
    conf.add_argument("--name", type=_stack_name, help="a named stack started with `up`")
    conf.add_argument(
        "--capacity",
        type=int,
        default=2,
        help="VOICEPOOL_SESSIONS_PER_POD (2: a slot is free during the drain check)",
    )
    conf.add_argument(
        "--env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more environment for the worker, as a pool's template env (repeatable)",
    )
    conf.add_argument("--boot-timeout", type=float, default=180.0, help="seconds to idle")
    conf.add_argument(
        "--first-report-within",
        type=float,
        default=20.0,
        help='seconds from start to the first ("starting") report',
    )
    conf.add_argument(
        "--no-sigterm-run",
        action="store_true",
        help="skip the second run that drains a worker by SIGTERM alone",
    )
    conf.add_argument("--log-dir", help="where the worker's output goes (default: a temp dir)")
    conf.add_argument("command", nargs=argparse.REMAINDER, help="-- the worker's command line")
    conf.set_defaults(func=_conformance)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DevstackError as e:
        print(f"voicepool-devstack: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("voicepool-devstack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
