"""The worker's JSON logs: one line per record, and numbers masked in every part of it."""

from __future__ import annotations

import io
import json
import logging

from voicepool_worker.runtime.logs import JsonFormatter, MaskNumbers

CALLER = "+15550100001"


def render(mask: bool, emit: object) -> dict[str, object]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    if mask:
        handler.addFilter(MaskNumbers())
    log = logging.getLogger(f"test-logs-{mask}-{id(emit)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    emit(log)  # type: ignore[operator]
    line = out.getvalue().strip()
    assert CALLER not in line if mask else CALLER in line
    return dict(json.loads(line))


def test_every_part_of_a_record_is_masked() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise RuntimeError(f"dial {CALLER} failed")
        except RuntimeError:
            log.exception(
                "received job request",  # livekit-agents' own record names the room
                extra={
                    "room": f"call-_{CALLER}_x7Yz",
                    "to": f"sip:{CALLER[1:]}@pbx.example",
                    "nested": {"numbers": [CALLER], "ms": 1234567890123},
                    "began": 1733540000.123,
                },
            )

    line = render(True, emit)
    assert line["room"] == "call-_+1555…0001_x7Yz"
    assert line["to"] == "sip:15550…0001@pbx.example"
    assert line["nested"] == {"numbers": ["+1555…0001"], "ms": 1234567890123}
    assert line["began"] == 1733540000.123  # numbers as numbers stay
    assert "+1555…0001" in str(line["exc"])


def test_args_are_masked_after_formatting_and_off_means_off() -> None:
    line = render(True, lambda log: log.info("calling %s now", CALLER))
    assert line["msg"] == "calling +1555…0001 now"
    render(False, lambda log: log.info("calling %s now", CALLER))
