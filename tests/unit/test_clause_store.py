"""Known phrases' audio kept on disk across worker starts (``providers.clause_store``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from voicepool_worker.providers.clause_store import ClauseStore, default_dir, open_store
from voicepool_worker.providers.piper_tts import PiperTTS

GREETING = "Hello, you have reached Voicepool Dental. How can I help you?"


def test_a_rendition_is_read_back_for_the_same_voice_and_clause_only(tmp_path: Path) -> None:
    store = ClauseStore(tmp_path, "voice-a")
    store.save("We are open.", b"\x01\x00\x02\x00")
    assert store.load("  We are   open. ") == b"\x01\x00\x02\x00"  # spaces as the splitter
    assert ClauseStore(tmp_path, "voice-b").load("We are open.") is None
    assert store.load("We are closed.") is None
    assert not list(tmp_path.glob("*.tmp"))  # written whole, nothing left half-way


def test_a_damaged_file_is_not_audio(tmp_path: Path) -> None:
    store = ClauseStore(tmp_path, "v")
    store.path("Hi.").write_bytes(b"\x01\x00\x02")  # odd length: cut short
    assert store.load("Hi.") is None
    store.path("Hi.").write_bytes(b"")
    assert store.load("Hi.") is None


def test_a_folder_that_cannot_be_written_warns_once_and_keeps_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    store = ClauseStore(blocker / "tts", "v")
    with caplog.at_level(logging.WARNING, "voicepool.worker.tts"):
        store.save("One.", b"\x00\x00")
        store.save("Two.", b"\x00\x00")
    assert store.load("One.") is None
    assert [r.getMessage() for r in caplog.records] == [
        "rendered phrases are not kept on disk (every start renders them)"
    ]


def test_the_setting_names_the_folder_or_turns_the_store_off(tmp_path: Path) -> None:
    assert open_store("", "v") is None and open_store("  ", "v") is None
    named = open_store(str(tmp_path), "v")
    assert named is not None and named.directory == tmp_path
    default = open_store(None, "v")
    assert default is not None and default.directory == Path(default_dir())
    env = {"XDG_CACHE_HOME": "/x"}
    assert default_dir(env) == "/x/voicepool/tts"
    assert default_dir({"HOME": "/h"}) == "/h/.cache/voicepool/tts"


def test_a_second_start_reads_the_known_phrases_back_instead_of_rendering(
    tmp_path: Path,
) -> None:
    """The real voice: the first worker renders and keeps, the next one renders nothing."""
    first = PiperTTS(cache_size=8, store_dir=str(tmp_path))
    first.remember([GREETING]).join(timeout=60)
    kept = sorted(tmp_path.glob("*.pcm"))
    assert len(kept) == 2  # two clauses: the greeting and the question

    second = PiperTTS(cache_size=8, store_dir=str(tmp_path))
    rendered: list[str] = []
    real_render = second.render

    def counting_render(clause: str) -> bytes:
        rendered.append(clause)
        return real_render(clause)

    second.render = counting_render  # type: ignore[method-assign]
    second.remember([GREETING]).join(timeout=60)
    assert rendered == []
    assert second.cache.get("How can I help you?") == first.cache.get("How can I help you?")

    kept[0].write_bytes(b"\x00")  # damaged: rendered again and kept anew
    third = PiperTTS(cache_size=8, store_dir=str(tmp_path))
    third.remember([GREETING]).join(timeout=60)
    assert all(len(p.read_bytes()) > 1000 for p in kept)


def test_without_a_cache_nothing_is_kept(tmp_path: Path) -> None:
    PiperTTS(cache_size=0, store_dir=str(tmp_path)).remember([GREETING]).join(timeout=10)
    assert not list(tmp_path.iterdir())


def test_renditions_shipped_with_the_install_are_read_but_never_written(
    tmp_path: Path,
) -> None:
    shipped, writable = tmp_path / "shipped", tmp_path / "writable"
    ClauseStore(shipped, "v").save("Hello.", b"\x01\x00")
    store = ClauseStore(writable, "v", seeds=(shipped,))
    assert store.load("Hello.") == b"\x01\x00"
    store.save("Goodbye.", b"\x02\x00")
    assert (writable / store.name("Goodbye.")).exists()
    assert not (shipped / store.name("Goodbye.")).exists()
    store.save("Hello.", b"\x03\x00")  # a newer rendition in the writable folder wins
    assert store.load("Hello.") == b"\x03\x00"


def test_the_shipped_folder_is_a_seed_of_every_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voicepool_worker.providers import clause_store

    monkeypatch.setattr(clause_store, "shipped_dir", lambda: tmp_path / "absent")
    plain = open_store(str(tmp_path / "cache"), "v")
    assert plain is not None and plain.seeds == ()
    (tmp_path / "shipped").mkdir()
    monkeypatch.setattr(clause_store, "shipped_dir", lambda: tmp_path / "shipped")
    seeded = open_store(str(tmp_path / "cache"), "v")
    assert seeded is not None and seeded.seeds == (tmp_path / "shipped",)
    own = open_store(str(tmp_path / "shipped"), "v")  # the image build writes into it
    assert own is not None and own.seeds == ()
    assert open_store("", "v") is None


def test_the_image_build_renders_the_known_phrases_into_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from voicepool_worker.agents.receptionist import seed_phrases
    from voicepool_worker.providers import piper_tts

    # the preload registers its voice and cache for this process: keep them out of other tests
    monkeypatch.setattr(piper_tts, "_SHARED", {})
    monkeypatch.setattr(seed_phrases, "known_phrases", lambda cfg: ["Hello there."])
    assert seed_phrases.main([str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.pcm"))) == 1
    assert "1 phrases rendered" in capsys.readouterr().out
    monkeypatch.setenv("VOICEPOOL_TTS_CACHE", "0")
    assert seed_phrases.main([str(tmp_path / "off")]) == 0  # nothing to render
    assert not (tmp_path / "off").exists()
