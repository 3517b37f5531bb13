"""The keypad menu and transfer targets: what a key press means, decided without I/O."""

from __future__ import annotations

import json

import pytest
from voicepool_contract.phone import MenuError, parse_menu_tree, parse_transfer_target
from voicepool_worker import config
from voicepool_worker.config import DEFAULT_MENU
from voicepool_worker.phone.dispatch import TelephonyError, dial_request
from voicepool_worker.phone.keypad import NO_TRANSFER_TEXT, Ask, Keypad, Transfer

from .conftest import LIVEKIT_ENV as BASE


def test_default_menu_answers_the_receptionist_questions_and_transfers_on_zero() -> None:
    menu = parse_menu_tree(DEFAULT_MENU)
    assert menu["1"] == "what are your opening hours"
    assert menu["0"] == "transfer"
    assert set(menu) == {"0", "1", "2", "3", "4"}


def test_menu_text_keeps_commas_and_folds_spaces() -> None:
    """Entries are split on ';' so a key may say a sentence with commas."""
    assert parse_menu_tree(" 1 =  hours,  please ; # = repeat that ;") == {
        "1": "hours, please",
        "#": "repeat that",
    }


def test_empty_menu_disables_the_keypad() -> None:
    assert parse_menu_tree("") == {}
    assert config.load({**BASE, "VOICEPOOL_DTMF_MENU": ""}).dtmf_menu == {}


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("1", "is not KEY=ACTION"),
        ("12=hours", "is not KEY=ACTION"),
        ("a=hours", "is not KEY=ACTION"),
        ("1=", "is not KEY=ACTION"),
        ("1=hours;1=address", "key '1' is defined twice"),
    ],
)
def test_bad_menus_name_the_setting(spec: str, needle: str) -> None:
    with pytest.raises(MenuError) as err:
        parse_menu_tree(spec)
    assert needle in str(err.value) and "VOICEPOOL_DTMF_MENU" in str(err.value)


@pytest.mark.parametrize(
    "target", ["tel:+15550100", "tel:+1 (555) 010-0", "sip:desk@pbx.example.com", "sips:a@b"]
)
def test_transfer_targets(target: str) -> None:
    assert parse_transfer_target(f"  {target} ") == target


@pytest.mark.parametrize("target", ["+15550100", "tel:", "sip:desk", "http://pbx", "tel:abc"])
def test_bad_transfer_targets(target: str) -> None:
    with pytest.raises(TelephonyError, match="VOICEPOOL_TRANSFER_TO"):
        parse_transfer_target(target)


def test_unset_transfer_target_is_none() -> None:
    assert parse_transfer_target("") is None
    assert config.load(BASE).transfer_to is None


def test_key_actions() -> None:
    keypad = Keypad(parse_menu_tree(DEFAULT_MENU), transfer_available=True)
    assert keypad.press("1", 0.0) == [Ask("what are your opening hours")]
    assert keypad.press("0", 1.0) == [Transfer()]
    assert keypad.press("9", 2.0) == []


def test_transfer_key_without_a_target_asks_for_a_person_instead() -> None:
    """Nowhere to send the call: the dialog answers the request rather than a dead key."""
    keypad = Keypad(parse_menu_tree(DEFAULT_MENU), transfer_available=False)
    assert keypad.press("0", 0.0) == [Ask(NO_TRANSFER_TEXT)]


@pytest.mark.parametrize(
    ("metadata", "number"),
    [
        ('{"phone_number": "+15550100"}', "+15550100"),
        ('{"phone_number": "+1 (555) 010-0123", "campaign": "x"}', "+15550100123"),
        ("", None),
        ("not json: an inbound call's own metadata", None),
        ('{"customer": 42}', None),
        ('["+15550100"]', None),
    ],
)
def test_dial_requests_come_from_dispatch_metadata(metadata: str, number: str | None) -> None:
    assert dial_request(metadata) == number


@pytest.mark.parametrize("bad", ["15550100", "+0555", "+1555010012345678", "call me"])
def test_bad_numbers_to_dial_are_refused(bad: str) -> None:
    with pytest.raises(TelephonyError, match=r"is not an E\.164 number"):
        dial_request(json.dumps({"phone_number": bad}))


def test_outbound_trunk_is_optional() -> None:
    assert config.load(BASE).sip_outbound_trunk is None
    cfg = config.load({**BASE, "VOICEPOOL_SIP_OUTBOUND_TRUNK": " ST_abc "})
    assert cfg.sip_outbound_trunk == "ST_abc"


def test_the_phone_and_the_webrtc_caller_count_voice_alike() -> None:
    """Both legs' TTFW start and stop at one loudness floor (bench/phone_latency.py)."""
    from voicepool_devstack.phone import PhoneConfig
    from voicepool_worker.measure import SPEECH_FLOOR_RMS

    assert PhoneConfig(server="127.0.0.1:5060", to="+15550100000").loud_rms == SPEECH_FLOOR_RMS
