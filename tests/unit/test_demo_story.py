"""``make demo`` exits non-zero when a step it narrates does not happen."""

from __future__ import annotations

import pytest
from voicepool_devstack.story import Story


def test_a_missed_step_is_said_and_sets_the_exit_code() -> None:
    said: list[str] = []
    story = Story(said.append)
    story.done("call-1: agent answered")
    assert story.exit_code() == 0 and story.summary() == ["every step happened as narrated"]
    assert not story.check(False, "phone: BYE", "phone: no BYE within 40 s")
    assert said[-1] == "NOT AS NARRATED: phone: no BYE within 40 s"
    assert story.exit_code() == 1
    assert story.summary()[1:] == ["  - phone: no BYE within 40 s"]


async def test_an_unanswered_draining_caller_is_a_missed_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo's own turn helper: a caller the agent never answers is not narrated as fine."""
    from types import SimpleNamespace

    from voicepool_devstack import demo
    from voicepool_worker import caller

    async def start(self: caller.Call, *, join_within: float = 30.0) -> None:
        return None

    async def greeted(self: caller.Call, within: float = 20.0) -> bool:
        return True

    async def unanswered(self: caller.Call, text: str, **kw: object) -> caller.TurnResult:
        return caller.TurnResult(text, None, 0.0)

    async def hangup(self: caller.Call) -> None:
        return None

    monkeypatch.setattr(caller.Call, "start", start)
    monkeypatch.setattr(caller.Call, "wait_greeting", greeted)
    monkeypatch.setattr(caller.Call, "say", unanswered)
    monkeypatch.setattr(caller.Call, "hangup", hangup)
    monkeypatch.setattr(demo, "say", lambda msg: None)

    def stop_after_first_turn() -> list[object]:
        raise RuntimeError("stop here")

    fake = SimpleNamespace(
        lk=SimpleNamespace(url="ws://127.0.0.1:1", api_key="k", api_secret="s" * 32),
        idle_registered=lambda: ["warm"],
        warm_in_status=lambda: True,
        show=lambda: None,
        pods=stop_after_first_turn,
    )
    story = Story(lambda msg: None)
    with pytest.raises(RuntimeError, match="stop here"):
        await demo._scenario(fake, story)  # type: ignore[arg-type]
    assert story.missed_steps == ["call-1: the agent did not answer"]
    assert story.exit_code() == 1
