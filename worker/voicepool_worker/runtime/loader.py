"""Which agent a pool's pods run: ``VOICEPOOL_AGENT=package.module:name`` (default: the
built-in receptionist), resolved once at start so a typo is one clear line, not a crash loop.

``name`` is an ``sdk.AgentApp``, or an ``async def entrypoint(ctx: JobContext)``; with the
latter, a module-level ``prewarm(proc)`` beside it is its prewarm hook.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from voicepool_contract import ENV_AGENT

from ..config import ConfigError

if TYPE_CHECKING:  # the sdk imports livekit-agents: only once main() prepared the metrics dir
    from ..sdk import AgentApp

#: The built-in receptionist, itself an app on the public API.
DEFAULT_AGENT = "voicepool_worker.agents.receptionist:app"

_loaded: dict[str, AgentApp] = {}


def agent_spec(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get(ENV_AGENT) or "").strip() or DEFAULT_AGENT


def load_app(spec: str) -> AgentApp:
    """The app ``spec`` names; ConfigError (one line, naming the setting) when it cannot be."""
    if spec in _loaded:
        return _loaded[spec]
    from ..sdk import AgentApp

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"{ENV_AGENT}={spec!r} is not package.module:name (e.g. booking_agent.agent:app)"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module itself fails as it loads
        raise ConfigError(
            f"{ENV_AGENT}={spec!r}: cannot import {module_name!r}: {type(e).__name__}: {e}"
        ) from None
    target = getattr(module, attr, None)
    if target is None:
        raise ConfigError(f"{ENV_AGENT}={spec!r}: {module_name!r} has no {attr!r}")
    if isinstance(target, AgentApp):
        app = target
    elif inspect.iscoroutinefunction(target):
        prewarm = getattr(module, "prewarm", None)
        app = AgentApp(entrypoint=target, prewarm=prewarm if callable(prewarm) else None)
    else:
        raise ConfigError(
            f"{ENV_AGENT}={spec!r}: {attr!r} is neither an sdk.AgentApp nor an async "
            "entrypoint(ctx) function"
        )
    _loaded[spec] = app
    return app


def agent_module(spec: str) -> str:
    return spec.partition(":")[0]
