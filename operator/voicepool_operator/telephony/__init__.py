"""A pool's phone numbers, in one home.

``spec`` types and checks ``spec.telephony`` (pure); ``plan`` decides which LiveKit SIP trunks
and dispatch rule a pool needs (pure); ``sync`` makes LiveKit match (glue); ``keeper`` runs the
sync beside the pool's reconcile, which writes its result; ``handlers`` cleans up on deletion.
"""
