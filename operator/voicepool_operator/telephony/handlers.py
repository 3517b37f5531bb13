"""kopf glue for a pool's phone numbers: deleting the pool deletes its LiveKit SIP objects.

Keeping them in line while the pool lives is the reconcile's (``keeper.py``); this is the one
handler telephony needs of its own, because a deleted pool has no more reconciles of that kind.
"""

from __future__ import annotations

from typing import Any

import kopf

from ..constants import GROUP, PLURAL, VERSION
from ..validate import SpecError
from .spec import parse_phones
from .sync import sync


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=2.0)
async def remove_phone_numbers(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    """Deleting the pool deletes its trunks and rule (a few retries if LiveKit is away)."""
    if not (body.get("spec") or {}).get("telephony") and not (body.get("status") or {}).get(
        "telephony"
    ):
        return
    problem: str | None
    try:
        spec = parse_phones(body.get("spec") or {})
    except SpecError as e:
        problem = f"the pool's spec does not parse, so its LiveKit is unknown: {e}"
    else:
        status = await sync(memo.kube, body, spec, deleting=True)
        problem = str(status["problem"]) if status.get("problem") else None
    if not problem:
        return
    if retry < 5:
        raise kopf.TemporaryError(f"removing SIP objects: {problem}", delay=2.0)
    await memo.kube.event(
        body,
        reason="SipCleanupFailed",
        action="DeleteTelephony",
        note=f"gave up removing the pool's LiveKit SIP objects: {problem}",
        type_="Warning",
    )
