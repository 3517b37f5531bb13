"""livekit-server in the local stack: dev mode on 127.0.0.1, free ports, fresh API keys.

Media stays on loopback, as far as livekit-server's own config reaches (``config``): its ICE
candidates are gathered on 127.0.0.1 only, no ICE over TCP (its listener would bind every
interface), no STUN lookup of its own, and the STUN server it hands its clients is on loopback
(it would hand them Google's public ones). The clients' side is up to their libraries: the
Python SDK's libwebrtc and livekit-sip's pion offer no interface filter, so their host
candidates are the machine's own non-loopback address (see docs/design.md, "Loopback").
It posts room events to the operator's webhook port.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import yaml

from .build import Builders, go_install
from .ports import free_port, free_ports
from .procs import Processes, http_get
from .progress import Progress
from .versions import LIVEKIT

CONFIG_FILE = "livekit.yaml"
RTC_PORTS = 201  # WebRTC media ports (UDP), one per peer connection


@dataclass
class LiveKitInfo:
    url: str
    http_url: str
    api_key: str
    api_secret: str
    #: livekit-server posts its webhooks to http://127.0.0.1:<port>/livekit/webhook, where
    #: an operator started with --webhook-port=<port> listens (0: no webhook configured).
    webhook_port: int = 0

    def env(self) -> dict[str, str]:
        return {
            "LIVEKIT_URL": self.url,
            "LIVEKIT_API_KEY": self.api_key,
            "LIVEKIT_API_SECRET": self.api_secret,
        }


def _build(progress: Progress) -> None:
    """Pinned to the newest 1.13.x whose go.mod has no replace directives.

    Later 1.13 releases replace pion modules with forks that the public module proxy does not
    serve, so they cannot be built from it; ``go install`` of v1.13.5 resolves everything there.
    """
    go_install(LIVEKIT, "github.com/livekit/livekit-server/cmd/server", progress)
    built = LIVEKIT.directory / "server"
    if built.exists():
        built.replace(LIVEKIT.path("livekit-server"))


def register(builders: Builders) -> None:
    builders.register(LIVEKIT, _build)


def config(
    port: int, udp_start: int, stun_port: int, api_key: str, api_secret: str
) -> dict[str, Any]:
    """livekit-server's YAML config for a loopback-only stack."""
    return {
        "port": port,
        "bind_addresses": ["127.0.0.1"],
        "rtc": {
            "port_range_start": udp_start,
            "port_range_end": udp_start + RTC_PORTS - 1,
            "tcp_port": 0,  # no ICE over TCP: its listener binds every interface
            "use_external_ip": False,  # no STUN lookup of the server's own address
            "node_ip": "127.0.0.1",  # what its candidates say
            # Gather on 127.0.0.1 only (pion skips loopback unless asked, and gathers on every
            # other interface: the machine's own address).
            "enable_loopback_candidate": True,
            "ips": {"includes": ["127.0.0.1/32"]},
            # For the clients: without a STUN server of its own it hands them Google's public
            # ones. Nothing answers here; on one machine there is nothing to discover.
            "stun_servers": [f"127.0.0.1:{stun_port}"],
        },
        "keys": {api_key: api_secret},
        "logging": {"level": "info", "json": False},
    }


def start(procs: Processes, extra: dict[str, Any] | None = None) -> LiveKitInfo:
    """Start livekit-server with ``extra`` config sections (SIP's redis); wait until it serves."""
    port, stun_port = free_port(), free_port(udp=True)
    udp_start = free_ports(RTC_PORTS, udp=True)
    api_key = "APIvp" + secrets.token_hex(6)
    api_secret = secrets.token_urlsafe(32)
    settings = {**config(port, udp_start, stun_port, api_key, api_secret), **(extra or {})}
    webhook_port = free_port()  # for the operator: room events for scale from zero
    settings["webhook"] = {
        "api_key": api_key,
        "urls": [f"http://127.0.0.1:{webhook_port}/livekit/webhook"],
    }
    cfg_path = procs.workdir / CONFIG_FILE
    cfg_path.write_text(yaml.safe_dump(settings))
    cfg_path.chmod(0o600)
    info = LiveKitInfo(
        f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", api_key, api_secret, webhook_port
    )
    _spawn(procs, info)
    return info


def restart(procs: Processes, info: LiveKitInfo) -> None:
    """Start the stack's livekit-server again after ``procs.stop("livekit-server")``: the same
    config, so the same URL, ports and keys (a region's LiveKit coming back, docs/routing.md)."""
    _spawn(procs, info)


def _spawn(procs: Processes, info: LiveKitInfo) -> None:
    procs.progress(f"starting livekit-server {LIVEKIT.version} (dev mode) on {info.url}")
    procs.spawn(
        "livekit-server",
        [
            str(LIVEKIT.path("livekit-server")),
            "--dev",
            f"--config={procs.workdir / CONFIG_FILE}",
            "--bind=127.0.0.1",
            "--node-ip=127.0.0.1",
        ],
    )
    procs.wait(
        "livekit-server", lambda: http_get(info.http_url + "/") == b"OK", "livekit-server ready"
    )
