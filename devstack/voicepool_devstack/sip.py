"""SIP in the local stack: redis, livekit-sip and the test phone, all on loopback.

livekit-server talks to livekit-sip over psrpc on redis, so a stack with SIP starts a private
``redis-server`` (Debian) first and points livekit-server at it (``livekit_settings``); then
``livekit-sip`` joins the same redis and listens for SIP on a free loopback port.
``livekit-sip`` (cgo: libopus, libsoxr) and ``voicepool-phone`` -- our own test phone on
livekit/sip's ``pkg/siptest`` -- are built together from the wrapper module ``devstack/go/sip``
whose go.sum locks the whole graph.

Pitfalls this module handles (see docs/telephony.md): without ``nat_1_to_1_ip`` livekit-sip
advertises a non-loopback address; its default ``max_cpu_utilization`` refuses outbound calls
on a busy 2-core machine; ``health_port`` would bind every interface, so it stays unset.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .apt import ensure_packages
from .build import GO_BUILD_FLAGS, Builders, run_go
from .errors import DevstackError
from .ports import free_port, free_ports
from .procs import Processes
from .progress import Progress
from .versions import GO_MODULES, LIVEKIT_SIP_VERSION, SIP, SIP_DEBIAN_PACKAGES

#: RTP ports livekit-sip may use for one stack (it binds them on 0.0.0.0; the SDP says 127.0.0.1).
RTP_PORTS = 200


@dataclass
class SipInfo:
    """Where the stack's SIP service listens (TCP and UDP) and the redis it shares."""

    address: str  # host:port of livekit-sip
    redis: str  # host:port

    def env(self) -> dict[str, str]:
        return {"VOICEPOOL_SIP_ADDR": self.address}


def _build(progress: Progress) -> None:
    """Install the cgo headers and build livekit-sip + voicepool-phone into the cache."""
    ensure_packages(SIP_DEBIAN_PACKAGES, "livekit-sip (cgo build) and SIP tests", progress)
    module = GO_MODULES / "sip"
    env = {"CGO_ENABLED": "1", "GOFLAGS": "-mod=readonly"}
    run_go(
        [
            "build",
            *GO_BUILD_FLAGS,
            "-ldflags",
            f"-s -w -X github.com/livekit/sip/version.Version={LIVEKIT_SIP_VERSION.lstrip('v')}",
            "-o",
            str(SIP.path("livekit-sip")),
            "github.com/livekit/sip/cmd/livekit-sip",
        ],
        module,
        f"building livekit-sip {LIVEKIT_SIP_VERSION} with cgo (a few minutes on 2 cores)",
        progress,
        env=env,
    )
    run_go(
        [
            "build",
            *GO_BUILD_FLAGS,
            "-ldflags",
            "-s -w",
            "-o",
            str(SIP.path("voicepool-phone")),
            "./phone",
        ],
        module,
        "building voicepool-phone (the SIP test phone)",
        progress,
        env=env,
    )


def register(builders: Builders) -> None:
    # Beside the others: its own Go module, and its cgo compile overlaps the Kubernetes build.
    builders.register(SIP, _build, beside=True)


def _tcp_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=1):
        return True


def _redis_ping(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def start_redis(procs: Processes) -> str:
    """A throwaway redis on loopback (no persistence); returns its host:port."""
    import shutil

    # a warm binary cache on a fresh machine still needs redis, sipp and the runtime libraries
    ensure_packages(SIP_DEBIAN_PACKAGES, "SIP in the local stack (or use --no-sip)", procs.progress)
    binary = shutil.which("redis-server")
    if binary is None:
        raise DevstackError(
            "redis-server not found: SIP needs it (run `make build`, which installs it, or "
            "apt-get install -y redis-server); or start the stack with --no-sip"
        )
    port = free_port(udp=True)
    address = f"127.0.0.1:{port}"
    procs.progress(f"starting redis-server on {address} (livekit-server <-> livekit-sip RPC)")
    procs.spawn(
        "redis",
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--dir",
            str(procs.workdir),
        ],
    )
    procs.wait("redis", lambda: _redis_ping(address), "redis ready")
    return address


def livekit_settings(redis: str) -> dict[str, Any]:
    """The livekit-server config sections telephony needs.

    ``redis`` lets it reach livekit-sip; ``room.enable_remote_unmute`` lets the agent take a
    caller off hold after a warm transfer muted the caller's track (docs/telephony.md).
    """
    return {"redis": {"address": redis}, "room": {"enable_remote_unmute": True}}


def sip_config(
    api_key: str, api_secret: str, ws_url: str, redis: str, sip_port: int, rtp_first: int
) -> dict[str, Any]:
    """livekit-sip's YAML config for a loopback-only stack."""
    return {
        "api_key": api_key,
        "api_secret": api_secret,
        "ws_url": ws_url,
        "redis": {"address": redis},
        "sip_port": sip_port,
        "listen_ip": "127.0.0.1",
        "nat_1_to_1_ip": "127.0.0.1",  # else Contact/SDP carry the first non-loopback address
        "rtp_port": f"{rtp_first}-{rtp_first + RTP_PORTS - 1}",
        "max_cpu_utilization": 1.0,  # the default 0.9 refuses outbound calls on a busy box
        "logging": {"level": "debug", "json": False},
    }


def start_sip(procs: Processes, ws_url: str, key: str, secret: str, redis: str) -> SipInfo:
    """Start livekit-sip against the stack's livekit-server; returns where it listens."""
    port = free_port(udp=True)
    cfg_path = procs.workdir / "sip.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            sip_config(key, secret, ws_url, redis, port, free_ports(RTP_PORTS, udp=True))
        )
    )
    cfg_path.chmod(0o600)
    address = f"127.0.0.1:{port}"
    procs.progress(f"starting livekit-sip {LIVEKIT_SIP_VERSION} on sip:{address}")
    procs.spawn("livekit-sip", [str(SIP.path("livekit-sip")), f"--config={cfg_path}"])
    procs.wait("livekit-sip", lambda: _tcp_open(address), "livekit-sip listening")
    _wait_registered(procs, time.monotonic() + 15)
    return SipInfo(address=address, redis=redis)


def _wait_registered(procs: Processes, deadline: float) -> None:
    """livekit-sip serves RPC once it logged that it is up; wait for that line, briefly."""
    log = procs.logs / "livekit-sip.log"
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "service ready" in text.lower() or "sip signaling listening" in text.lower():
            return
        time.sleep(0.1)


def phone_binary() -> Path:
    """The built test phone (``make build`` builds it with livekit-sip)."""
    path = SIP.path("voicepool-phone")
    if not path.exists():
        raise DevstackError(f"{path} is missing: run `make build` (it builds the SIP test phone)")
    return path
