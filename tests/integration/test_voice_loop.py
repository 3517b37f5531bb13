"""The voice loop's echo cancellation and barge-in, against the real livekit-server.

A real worker and a synthetic WebRTC caller (``voicepool_worker.caller``): for echo the caller's
"speakerphone" plays the agent's received voice back into its microphone (-10 dB, 100 ms
later) while the caller only asks its questions; for barge-in it talks over a long reply, or
knocks on the desk during one (the early barge-in pauses the reply and resumes it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from voicepool_devstack.livekit import LiveKitInfo

from .voice_scenarios import (
    ECHO_DELAY_MS,
    LONG_QUESTION,
    SPEAKERPHONE_GAIN_DB,
    barge_ins,
    caller,
    echo_call,
)
from .worker_harness import WorkerProcess, agent_name

pytestmark = [pytest.mark.livekit]


@pytest.fixture(scope="module")
def livekit(livekit_alone: LiveKitInfo) -> LiveKitInfo:
    return livekit_alone


@pytest.fixture()
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def worker(
    lk: LiveKitInfo, tmp_path: Path, workers: list[WorkerProcess], extra: dict[str, str]
) -> WorkerProcess:
    env = {"VOICEPOOL_LOG_TRANSCRIPTS": "true", **extra}  # the turns are judged from the log
    w = WorkerProcess(lk, tmp_path, agent=agent_name(), env=env)
    workers.append(w)
    w.wait_ready(timeout=120)
    return w


async def speakerphone(
    lk: LiveKitInfo, w: WorkerProcess, tag: str, *, until_spurious: bool = False
) -> tuple[int, float, str]:
    c = caller(
        w,
        lk.url,
        lk.api_key,
        lk.api_secret,
        tag,
        echo_gain=10 ** (SPEAKERPHONE_GAIN_DB / 20),
        echo_delay_ms=ECHO_DELAY_MS,
    )
    out = await echo_call(c, w, seconds=30.0, until_spurious=until_spurious)
    detail = (
        f"asked {len(out.asked)}, agent talked {out.agent_talk_s:.0f} s, heard {out.user_turns}"
        f" ({out.at_hangup} committed at hang-up, not counted)"
    )
    print(f"\n{tag}: {out.spurious} spurious turns, {out.interrupted} replies cut; {detail}")
    return out.spurious, out.agent_talk_s, detail


@pytest.mark.timeout(240)
async def test_the_agent_does_not_answer_its_own_echo(
    livekit: LiveKitInfo, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    w = worker(livekit, tmp_path, workers, {})
    spurious, talked, detail = await speakerphone(livekit, w, "echo-aec-on")
    assert talked >= 30.0, detail
    assert spurious == 0, f"the agent answered its own voice {spurious} times: {detail}"


@pytest.mark.timeout(240)
async def test_without_echo_cancellation_it_does(
    livekit: LiveKitInfo, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """The same call with the canceller off: the echo test above can fail (the call ends at
    the first turn the agent takes from its own voice)."""
    w = worker(livekit, tmp_path, workers, {"VOICEPOOL_ECHO_CANCELLATION": "false"})
    spurious, _talked, detail = await speakerphone(livekit, w, "echo-aec-off", until_spurious=True)
    assert spurious > 0, f"no self-answer even without echo cancellation: {detail}"


@pytest.mark.timeout(240)
async def test_talking_over_a_reply_silences_the_agent(
    livekit: LiveKitInfo, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    w = worker(livekit, tmp_path, workers, {})
    lk = livekit
    c = caller(w, lk.url, lk.api_key, lk.api_secret, "barge")
    interjection = "sorry, actually, where are you located?"
    try:
        await c.start(join_within=60)
        assert await c.wait_greeting(within=30), "no greeting"
        (b,) = await barge_ins(c, [interjection])
    finally:
        await c.hangup()
    assert b.agent_was_talking, "the long reply never started"
    assert b.stop_ms is not None, f"the agent talked on over the caller\n{w.tail()}"
    print(f"\nagent silent {b.stop_ms:.0f} ms after the caller's voicing start")
    # the agent stopped while the caller was still speaking (~2 s), not after its reply ended
    assert b.stop_ms < 2000, b
    mine = c.room_name
    assert [x for x in w.msgs("onset pause") if x.get("room") == mine], "no early barge-in"
    replies = [x for x in w.msgs("agent turn") if x.get("room") == mine]
    assert any(x.get("interrupted") for x in replies), replies
    heard = [str(x["transcript"]) for x in w.msgs("user turn") if x.get("room") == mine]
    if not any("located" in t for t in heard):  # the barge-in held; the words are STT's part
        pytest.xfail(f"issue 11: the interjection over the agent was heard as {heard}")


def knock() -> tuple[bytes, ...]:
    """60 ms of a knock on the desk: a loud noise burst that decays, no voice in it."""
    rng = np.random.default_rng(7)
    frames = []
    for i in range(6):
        burst = rng.normal(0.0, 6000.0 * 0.6**i, 480).clip(-32767, 32767)
        frames.append(burst.astype("<i2").tobytes())
    return (*frames, *([b"\0" * 960] * 30))


@pytest.mark.timeout(240)
async def test_a_knock_over_a_reply_pauses_it_briefly_and_the_reply_goes_on(
    livekit: LiveKitInfo, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """The early barge-in's onset also fires on a sound that is not the caller's voice; the
    VAD then hears no speech, so the reply resumes where it paused and nothing is lost."""
    w = worker(livekit, tmp_path, workers, {})
    lk = livekit
    c = caller(w, lk.url, lk.api_key, lk.api_secret, "knock")
    try:
        await c.start(join_within=60)
        assert await c.wait_greeting(within=30), "no greeting"
        await c.speak(LONG_QUESTION, quiet=1.0)
        b = await c.talk_over("", frames=knock())
        await c.wait_agent_quiet(quiet=1.5, within=20)
    finally:
        await c.hangup()
    assert b.agent_was_talking, "the long reply never started"
    mine = c.room_name
    paused = [x for x in w.msgs("onset pause") if x.get("room") == mine]
    resumed = [x for x in w.msgs("onset resumed") if x.get("room") == mine]
    assert paused and resumed, f"paused {paused}, resumed {resumed}\n{w.tail()}"
    replies = [x for x in w.msgs("agent turn") if x.get("room") == mine]
    long = [x for x in replies if "open" in str(x.get("reply", "")).lower()]
    assert long and not any(x.get("interrupted") for x in long), replies
    heard = [str(x["transcript"]) for x in w.msgs("user turn") if x.get("room") == mine]
    assert len(heard) == 1, heard  # the question only: the knock was no turn


@pytest.mark.timeout(300)
async def test_a_turn_ends_by_the_end_of_turn_model_and_a_pause_does_not(
    livekit: LiveKitInfo, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Smart Turn v3.2 and the whisper STT through the real livekit-server: a question ends its
    turn on the model's "complete"; a 1.2 s pause after "i wanted to ask about the" is judged
    unfinished, so the agent waits and the sentence is one turn, answered as a whole.

    The ceiling for an unfinished turn is 2 s here, not the default 1.2 s: on a 2-core machine
    running the other test lane, the VAD reported the caller's return 0.3-0.7 s late, after a
    1.2 s ceiling had already ended the turn (measured; the model had said "not yet"). The
    pause is then 1.2 s because livekit-agents flushes the STT at half the ceiling: a shorter
    pause had that flush cut "price" in two ("program. christ of the cleaning"). What the
    default ceiling costs and saves on real pauses is the bench's "pausing caller" figure; the
    two utterances are ones the model judges right in piper's voice (offline 0.98 and 0.03)."""
    from voicepool_worker.caller import speech_frames

    env = {
        "VOICEPOOL_TURN_DETECTION": "smart-turn",
        "VOICEPOOL_STT": "whisper",
        "VOICEPOOL_ENDPOINTING_MAX_DELAY": "2.0",
    }
    w = worker(livekit, tmp_path, workers, env)
    lk = livekit
    c = caller(w, lk.url, lk.api_key, lk.api_secret, "eot")
    halves = ("i wanted to ask about the", "price of a cleaning")
    pause = [b"\0" * len(speech_frames(halves[0])[0])] * 120  # 1.2 s
    try:
        await c.start(join_within=60)
        assert await c.wait_greeting(within=30), "no greeting"
        asked = await c.say("what are your opening hours?", answer_timeout=20)
        frames = [*speech_frames(halves[0]), *pause, *speech_frames(halves[1])]
        paused = await c.say(" ".join(halves), answer_timeout=20, frames=frames)
        heard_from = c.first_voiced_sent or 0.0
        spoke_to = c.last_voiced_sent or 0.0
        early = [t for t in c.listener.loud_at if heard_from < t < spoke_to]
    finally:
        await c.hangup()
    mine = c.room_name
    verdicts = [x for x in w.msgs("turn model") if x.get("room") == mine]
    users = [str(x["transcript"]) for x in w.msgs("user turn") if x.get("room") == mine]
    replies = [str(x["reply"]) for x in w.msgs("agent turn") if x.get("room") == mine]
    detail = f"verdicts {verdicts}\nheard {users}\nreplies {replies}\n{w.tail()}"
    assert asked.ttfw_ms is not None and paused.ttfw_ms is not None, detail
    assert verdicts and verdicts[0]["complete"], detail  # the question: ended by the model
    assert any("monday" in r.lower() for r in replies), detail
    assert any(not v["complete"] and v["wait_s"] == 2.0 for v in verdicts[1:]), detail
    assert not early, f"the agent talked over the caller's second half: {detail}"
    assert len(users) == 2 and "wanted" in users[1] and "cleaning" in users[1], detail
    assert any("euros" in r for r in replies[1:]), detail  # answered as a whole
