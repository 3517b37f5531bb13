"""Where a pool's workers (and the operator, for SIP) reach LiveKit: typed and checked (pure).

The API key and secret stay in a Secret of the pool's own namespace; this is its name and keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .validate import SpecError, local_object_name, secret_key


@dataclass(frozen=True)
class LiveKitSpec:
    """The LiveKit server a pool's workers join, and the Secret (a name in the pool's own
    namespace) with its API key and secret."""

    url: str
    credentials_secret: str
    api_key_key: str = "apiKey"
    api_secret_key: str = "apiSecret"
    #: Key ids (not secrets) whose signed webhook events may scale the pool from zero, besides
    #: its own key (docs/security.md).
    webhook_signing_keys: tuple[str, ...] = ()


def parse_livekit(raw: Mapping[str, Any]) -> LiveKitSpec:
    """``spec.livekit`` typed; SpecError naming the field."""
    livekit = raw
    url = str(livekit.get("url") or "")
    if not url.startswith(("ws://", "wss://")):
        raise SpecError(f"spec.livekit.url: {url!r} must start with ws:// or wss://")
    secret = livekit.get("credentialsSecretRef") or {}
    if not secret.get("name"):
        raise SpecError("spec.livekit.credentialsSecretRef.name: required")
    where = "spec.livekit.credentialsSecretRef"
    return LiveKitSpec(
        url=url,
        credentials_secret=local_object_name(secret["name"], f"{where}.name"),
        api_key_key=secret_key(secret.get("apiKeyKey"), "apiKey", f"{where}.apiKeyKey"),
        api_secret_key=secret_key(secret.get("apiSecretKey"), "apiSecret", f"{where}.apiSecretKey"),
        webhook_signing_keys=tuple(str(k) for k in livekit.get("webhookSigningKeys") or ()),
    )
