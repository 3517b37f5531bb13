"""Rendered clauses kept on disk, so a starting worker does not render its known phrases again.

Filling the embedded TTS's cache with the receptionist's known phrases (25 phrases, about 90 s
of speech) costs piper about 7 s of one core at every start, in the forkserver, before the
worker registers with LiveKit: every new pod, every restart and every test worker paid it, and
on a 2-core node it took that core from the calls already running. The same voice renders the
same clause the same way (up to piper's sampling noise), so a rendition is kept in a file named
by the voice's fingerprint and the clause, and later starts read it back in milliseconds.

``VOICEPOOL_TTS_CACHE_DIR`` sets the folder (default ``$XDG_CACHE_HOME/voicepool/tts``, or
``~/.cache/voicepool/tts``; an empty value turns the store off). A folder that cannot be written
(a read-only root filesystem) or a damaged file only costs the render: the store then says so
once and the clause is rendered as before.

The worker image ships the default receptionist's phrases already rendered (``shipped_dir``,
written at image build by ``agents.receptionist.seed_phrases``): a new pod reads them there,
and only a pool's own phrases (its greeting, its dialog's answers) are rendered and kept in the
writable folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import uuid
from pathlib import Path

log = logging.getLogger("voicepool.worker.tts")

#: Sample width of the PCM kept (16-bit mono): a file of odd length is damaged.
_SAMPLE_BYTES = 2


def default_dir(env: dict[str, str] | None = None) -> str:
    """Where renditions live unless ``VOICEPOOL_TTS_CACHE_DIR`` says otherwise."""
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return str(Path(base) / "voicepool" / "tts")


def shipped_dir() -> Path:
    """Renditions installed with the worker (the image's build renders them here)."""
    return Path(sys.prefix) / "share" / "voicepool" / "tts"


def clause_key(clause: str) -> str:
    """A clause as the cache sees it: the sentence splitter may keep or drop spaces."""
    return " ".join(clause.split())


class ClauseStore:
    """Files of 16-bit PCM, one per (voice, clause); every failure falls back to rendering."""

    def __init__(self, directory: str | Path, voice: str, seeds: tuple[Path, ...] = ()) -> None:
        self.directory = Path(directory)
        self.voice = voice
        self.seeds = seeds  # read-only folders looked in after ``directory``
        self._broken = False  # writing failed once: do not try (and log) again

    def name(self, clause: str) -> str:
        digest = hashlib.sha256(f"{self.voice}\0{clause_key(clause)}".encode()).hexdigest()
        return f"{digest[:32]}.pcm"

    def path(self, clause: str) -> Path:
        return self.directory / self.name(clause)

    def load(self, clause: str) -> bytes | None:
        """The kept rendition, or None (absent or damaged: the caller renders it)."""
        name = self.name(clause)
        for folder in (self.directory, *self.seeds):
            try:
                audio = (folder / name).read_bytes()
            except OSError:
                continue
            if audio and not len(audio) % _SAMPLE_BYTES:
                return audio
        return None

    def save(self, clause: str, audio: bytes) -> None:
        """Keep a rendition; written whole or not at all (two workers may write at once)."""
        if self._broken or not audio:
            return
        target = self.path(clause)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(audio)
            os.replace(tmp, target)
        except OSError as e:
            self._broken = True
            log.warning(
                "rendered phrases are not kept on disk (every start renders them)",
                extra={"dir": str(self.directory), "error": str(e)},
            )
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def open_store(setting: str | None, voice: str) -> ClauseStore | None:
    """The store a ``VOICEPOOL_TTS_CACHE_DIR`` value names (None: the default; "": off),
    reading the renditions shipped with the installation too."""
    folder = default_dir() if setting is None else setting.strip()
    if not folder:
        return None
    shipped = shipped_dir()
    seeds = (shipped,) if shipped.is_dir() and shipped != Path(folder) else ()
    return ClauseStore(folder, voice, seeds)
