"""``voicepool-control``: list, inspect, follow, listen to, steer and dial a pool's calls, and
the ``voicepool calls`` CLI that talks to it (docs/control.md).

``calls`` and ``tokens`` are pure (records, checks, tables, bearer tokens); ``livekit`` is the
glue to a pool's LiveKit server (one ListRooms per list, RPC to the agent, join tokens,
dispatches); ``service`` is the stateless aiohttp service; ``cli`` the command line.
"""
