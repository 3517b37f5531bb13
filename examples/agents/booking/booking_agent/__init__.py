"""Harbour Dental's booking line: an example team agent hosted by voicepool.

``booking_agent.agent:app`` is what a pool's ``VOICEPOOL_AGENT`` names. ``slots`` (the shipped
calendar and the answers it gives) and ``intents`` (which caller words want which tool) are pure
and unit-tested; ``agent`` wires them into a livekit-agents ``Agent`` on voicepool's public API
(``voicepool_worker.sdk``). docs/agents.md walks through it.
"""
