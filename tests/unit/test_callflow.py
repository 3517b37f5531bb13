"""Keypad menus, multi-digit entry, spoken call intents, limits and masking: pure call logic."""

from __future__ import annotations

import pytest
from voicepool_contract.phone import MenuError, mask_number, mask_numbers_in, parse_menu_tree
from voicepool_worker import config
from voicepool_worker.phone.keypad import (
    NO_DIGITS_TEXT,
    NO_SUCH_KEY_TEXT,
    Ask,
    CallLimits,
    Hangup,
    Keypad,
    Say,
    Transfer,
    briefing,
    idle_step,
    spoken_digits,
)

from .conftest import LIVEKIT_ENV as BASE

MENU = (
    "1=what are your opening hours;4=Bookings. Press 1 for a cleaning.;"
    "4>1=i would like to book a cleaning;4>2>1=deep cleaning please;"
    "5=collect:my account number is;9=hangup;0=transfer"
)


def keypad(**kw: object) -> Keypad:
    return Keypad(parse_menu_tree(MENU), **kw)  # type: ignore[arg-type]


def test_menu_tree_keeps_flat_menus_and_fills_in_submenu_prompts() -> None:
    menu = parse_menu_tree(MENU)
    assert menu["1"] == "what are your opening hours"
    assert menu["41"] == "i would like to book a cleaning"
    assert menu["42"] == "Please choose an option."  # implied by 4>2>1
    assert parse_menu_tree("") == {}


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("1 hours", "is not KEY=ACTION"),
        ("12=hours", "is not KEY=ACTION"),
        ("1>=x", "is not KEY=ACTION"),
        ("#>1=x", "is not KEY=ACTION"),
        ("1=a;1=b", "defined twice"),
        ("5=collect:", "needs a label"),
        ("0=transfer;0>1=x", "has a submenu"),
    ],
)
def test_bad_menus_are_refused_with_the_entry(spec: str, needle: str) -> None:
    with pytest.raises(MenuError, match=needle):
        parse_menu_tree(spec)
    with pytest.raises(config.ConfigError, match=needle):
        config.load({**BASE, "VOICEPOOL_DTMF_MENU": spec})


def test_a_leaf_key_asks_the_dialog_and_returns_to_the_top() -> None:
    k = keypad()
    assert k.press("1", 0) == [Ask("what are your opening hours")]
    assert k.path == ""


def test_nested_menus_prompt_descend_and_go_back_with_star() -> None:
    k = keypad()
    assert k.press("4", 0) == [Say("Bookings. Press 1 for a cleaning.")]
    assert k.press("2", 1) == [Say("Please choose an option.")]
    assert k.press("*", 2) == [Say("Bookings. Press 1 for a cleaning.")]
    assert k.press("1", 3) == [Ask("i would like to book a cleaning")]
    assert k.press("4", 4) and k.press("2", 5) and k.press("1", 6) == [Ask("deep cleaning please")]
    assert k.press("4", 7) and k.press("7", 8) == [Say(NO_SUCH_KEY_TEXT)]


def test_multi_digit_entry_ends_with_hash_and_is_read_back() -> None:
    k = keypad()
    assert k.press("5", 0) == []
    assert k.deadline() == 5.0
    for i, d in enumerate("1234"):
        assert k.press(d, 1 + i) == []
    assert k.press("#", 6) == [Say("You entered 1 2 3 4."), Ask("my account number is 1234")]
    assert k.deadline() is None


def test_multi_digit_entry_ends_after_the_inter_digit_timeout() -> None:
    k = keypad(inter_digit_timeout_s=3.0)
    k.press("5", 0)
    k.press("9", 1)
    k.press("8", 2)
    assert k.tick(4.9) == []  # 2.9 s since the last key
    assert k.tick(5.0) == [Say("You entered 9 8."), Ask("my account number is 98")]


def test_star_restarts_an_entry_and_an_empty_one_is_said_so() -> None:
    k = keypad()
    k.press("5", 0)
    k.press("1", 1)
    assert k.press("*", 2) == [Say("Okay, start again.")]
    assert k.press("#", 3) == [Say(NO_DIGITS_TEXT)]


def test_garbage_keys_are_ignored_and_long_entries_capped() -> None:
    k = keypad()
    for junk in ("", "A", "12", "\x00", "ä"):
        assert k.press(junk, 0) == []
    k.press("5", 0)
    for i in range(100):
        k.press("7", i)
    effects = k.press("#", 101)
    assert effects[1] == Ask("my account number is " + "7" * 32)


def test_transfer_and_hangup_keys() -> None:
    assert keypad().press("0", 0) == [Transfer()]
    assert keypad(transfer_available=False).press("0", 0) == [
        Ask("i would like to talk to a person")
    ]
    assert keypad().press("9", 0) == [Hangup("caller chose hang up on the keypad")]


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("can i speak to a person", "transfer"),
        ("I want to talk with a human please", "transfer"),
        ("operator", "transfer"),
        ("okay goodbye", "hangup"),
        ("Bye.", "hangup"),
        ("that's all for today", "hangup"),
        ("what are your opening hours", None),
        ("I'd like to book an appointment for my person", None),
        ("", None),
    ],
)
def test_spoken_call_intents(text: str, intent: str | None) -> None:
    """The dialog decides what a caller's words ask of the call; call control carries it out."""
    from voicepool_worker.providers import dialog

    assert dialog.respond(dialog.load(), [("user", text)]).action == intent


def test_idle_prompts_once_then_hangs_up() -> None:
    limits = CallLimits(idle_timeout_s=10)
    assert idle_step(limits, 9.9, False) is None
    assert idle_step(limits, 10, False) == "prompt"
    assert idle_step(limits, 15, True) is None
    assert idle_step(limits, 20, True) == "hangup"
    assert idle_step(CallLimits(), 1e9, False) is None


def test_phone_numbers_are_masked_in_logs() -> None:
    assert mask_number("+15550100001") == "+1555…0001"
    assert mask_numbers_in("call-_+15550100001_AbC") == "call-_+1555…0001_AbC"
    assert mask_numbers_in("sip_+15550100001") == "sip_+1555…0001"
    assert mask_numbers_in("call-abc123") == "call-abc123"
    assert spoken_digits("12*#") == "1 2 star hash"


def test_privacy_defaults_mask_numbers_and_keep_transcripts_out() -> None:
    cfg = config.load(BASE)
    assert cfg.mask_phone_numbers and not cfg.log_transcripts
    cfg = config.load(
        {**BASE, "VOICEPOOL_MASK_PHONE_NUMBERS": "false", "VOICEPOOL_LOG_TRANSCRIPTS": "true"}
    )
    assert not cfg.mask_phone_numbers and cfg.log_transcripts


def test_warm_transfer_briefing_names_the_last_digits_and_what_the_caller_said() -> None:
    said = ["good morning", "i have a question", "my crown fell out", "", "can i talk to a person"]
    text = briefing("+15550100001", said, "human")
    assert "ends in 0 0 0 1" in text and "+1555" not in text  # not the whole number
    assert "i have a question; my crown fell out; can i talk to a person." in text
    assert "good morning" not in text  # only the last few sentences
    assert text.endswith("I am connecting you now.")
    assert "asked for human" in briefing("", [], "human")  # nothing said: the reason
    assert briefing("", []).startswith("Hello, this is the voice assistant. I have a caller on")


def test_warm_transfer_number_is_e164_and_makes_the_keypad_transfer_key_work() -> None:
    cfg = config.load({**BASE, "VOICEPOOL_WARM_TRANSFER_TO": "+1 (555) 010-7777"})
    assert cfg.warm_transfer_to == "+15550107777" and cfg.transfer_to is None
    assert config.load(BASE).warm_transfer_to is None
