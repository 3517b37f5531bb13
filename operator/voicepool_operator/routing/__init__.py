"""Routing new calls across regions: the VoiceRoute spec, the pure choice and status folding,
the operator's region watches and the stateless ``voicepool-router`` (docs/routing.md)."""
