"""An outbound call's room name is shown as it was given: no part of it reads as a number."""

from __future__ import annotations

import re

from voicepool_contract.phone import mask_numbers_in
from voicepool_operator.control.service import outbound_room


def test_outbound_room_names_are_never_masked_and_do_not_repeat() -> None:
    names = [outbound_room() for _ in range(2000)]
    assert all(re.fullmatch(r"out-[a-z]{12}", n) for n in names), names[:3]
    assert all(mask_numbers_in(n) == n for n in names)
    assert len(set(names)) == len(names)


def test_a_hex_room_name_can_be_masked_which_is_why_dial_does_not_use_one() -> None:
    assert mask_numbers_in("out-fd164125323b") != "out-fd164125323b"
