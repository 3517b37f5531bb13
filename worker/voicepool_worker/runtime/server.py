"""``voicepool-worker``: one pod's livekit-agents server, its session accounting and its drain.

livekit-agents does the worker protocol (registration, load reports, job dispatch, one warm
process per call). This module adds what the operator needs on top:

* capacity = ``VOICEPOOL_SESSIONS_PER_POD``: a count-based ``load_fnc`` (active / capacity) and a
  ``load_threshold`` that makes LiveKit see WS_FULL exactly at capacity, plus a request filter
  that rejects (without terminating) any job beyond it -- so a pod never runs more calls;
* pod reporting: one merge-patch of the agreed annotations per session start/end (``pod.py``);
* drain: SIGTERM and the operator's ``voicepool.dev/drain`` annotation take the same path --
  stop taking jobs at once (WS_FULL, reject requests, /readyz 503), let the calls in progress
  finish, exit 0. A second signal or ``VOICEPOOL_DRAIN_TIMEOUT_SECONDS`` ends them (exit 1);
* ``/healthz``, ``/readyz`` and ``/metrics`` on ``VOICEPOOL_HTTP_PORT``.

The server runs in livekit-agents' production ("start") mode, driven programmatically instead
of through its CLI so the drain can be triggered by the pod watch as well as by signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .. import config
from ..config import ConfigError, WorkerConfig
from . import logs, records
from .loader import DEFAULT_AGENT, agent_module, agent_spec, load_app
from .sessions import (
    PodReport,
    Sessions,
    load_threshold,
    reported_load,
    start_backoff_s,
    start_deadline_s,
)

# Nothing that imports livekit-agents (and so prometheus-client) at the top: main() must point
# PROMETHEUS_MULTIPROC_DIR at its directory before prometheus-client is first imported.
if TYPE_CHECKING:
    from aiohttp import web
    from livekit.agents import AgentServer, JobRequest

    from ..sdk import AgentApp
    from .pod import DrainWatch, PodReporter

log = logging.getLogger("voicepool.worker")


async def announce_capacity(server: Any) -> None:
    """Tell LiveKit at once that a call slot is free again.

    livekit-agents reports the worker's load every 2.5 s; a call dispatched in between to a
    worker still marked full (capacity 1: every call right after the last one ended) is not
    offered to it again, and the caller waits for an agent that never joins.
    """
    try:
        await server._refresh_worker_load()  # private: the framework has no public hook
        await server._update_worker_status()
    except Exception as e:  # the periodic report still runs
        log.warning("capacity update failed", extra={"error": str(e)})


EXIT_OK = 0
EXIT_FORCED = 1  # calls were cut: second signal, drain deadline, or LiveKit gone for good
EXIT_CONFIG = 2
CLOSE_TIMEOUT_S = 30.0


def preload_modules(cfg: WorkerConfig, app: AgentApp, spec: str) -> list[str]:
    """Imported once in livekit-agents' forkserver, shared copy-on-write by call processes:
    the VAD, the runtime's job code, the hosted agent's module and what the agent asks for."""
    base = ["livekit.plugins.silero", "voicepool_worker.runtime.jobs", agent_module(spec)]
    wanted = app.preload_modules(cfg)
    return [*base, *(m for m in wanted if m not in base)]


def _now() -> datetime:
    return datetime.now(UTC)


class Runtime:
    """Everything the worker's main process does around livekit-agents' ``AgentServer``."""

    def __init__(self, cfg: WorkerConfig, agent: str = DEFAULT_AGENT) -> None:
        self.cfg = cfg
        self.agent = agent  # VOICEPOOL_AGENT: the app it hosts (loaded and checked at start)
        self.app = load_app(agent)
        self.state = Sessions(capacity=cfg.capacity)
        self.pending = 0  # job requests accepted but not launched yet
        self.server: AgentServer | None = None
        self._tasks_keep: set[asyncio.Future[None]] = set()
        self.reporter: PodReporter | None = None
        self.watch: DrainWatch | None = None
        self.ended: records.EndedCalls | None = None  # CallEnded Events (the retention window)
        self.metrics: ModuleType | None = None  # imported once livekit cleaned the metrics dir
        self.fatal: str | None = None
        self._drain = asyncio.Event()
        self._force = asyncio.Event()
        self._force_reason = ""
        self._signals = 0
        self._http: web.AppRunner | None = None
        self._api: Any = None
        self._early_patches: list[str] = []
        self._starting: set[str] = set()  # job processes started, not initialized yet
        self._early_start_failures = 0

    # -- state transitions (all on the event loop) ----------------------------------------

    def _apply(self, transition: tuple[Sessions, PodReport | None]) -> None:
        self.state, report = transition
        if self.reporter is not None:
            self.reporter.submit(report)
        if self.metrics is not None:
            self.metrics.ACTIVE_SESSIONS.set(self.state.count)

    def request_drain(self, reason: str) -> None:
        """SIGTERM and the drain annotation both land here; only the first one counts."""
        if self.state.draining:
            return
        log.info(
            "draining: no new calls; waiting for calls in progress",
            extra={"reason": reason, "active_sessions": self.state.count},
        )
        self._apply(self.state.drain(reason, _now()))
        self._drain.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            self.request_drain(sig.name)
        else:
            self._force_reason = f"second signal ({sig.name})"
            self._force.set()

    @property
    def unseen(self) -> bool:
        """The apiserver refuses our reports: the operator cannot see this pod's calls, so it
        takes none (it may be scaled down as never having served)."""
        return self.reporter is not None and self.reporter.refused is not None

    @property
    def _server_started(self) -> bool:
        """livekit-agents' ``run()`` left its start-up (``worker_started``: the metrics are
        imported then, and only then)."""
        return self.metrics is not None

    def _closed_because(self, state: Sessions) -> str | None:
        """Why the worker takes no call at all right now (None: it takes calls while not full);
        the one list the load LiveKit sees and the job requests it rejects both read."""
        if state.draining:
            return "draining"
        if state.broken:
            return "job processes fail to start"
        if self.unseen:
            return "reports refused"
        return None

    def load(self) -> float:
        """livekit-agents' ``load_fnc`` (runs in a thread; reads one immutable snapshot)."""
        state = self.state
        return 1.0 if self._closed_because(state) else reported_load(state.load)

    async def on_request(self, req: JobRequest) -> None:
        """Take a job only while seen, not draining and below capacity; else hand it back."""
        fields = {"room": req.room.name, "session": req.id, "participant": None}
        full = self.state.count + self.pending >= self.cfg.capacity
        why = self._closed_because(self.state) or ("full" if full else None)
        if why is not None:
            log.info("job request rejected", extra={**fields, "why": why})
            await req.reject(terminate=False)  # LiveKit may give it to another worker
            return
        self.pending += 1
        try:
            await req.accept()
        finally:
            self.pending -= 1

    def _on_started(self) -> None:
        from .. import metrics  # after livekit-agents cleaned PROMETHEUS_MULTIPROC_DIR

        self.metrics = metrics
        metrics.CAPACITY.set(self.cfg.capacity)
        metrics.ACTIVE_SESSIONS.set(self.state.count)
        for result in self._early_patches:
            metrics.POD_PATCHES.labels(result=result).inc()
        self._early_patches.clear()
        metrics.PROCESS_START_FAILURES.inc(self._early_start_failures)

    async def _watch_pool(self, server: AgentServer) -> None:
        """Listen to the process pool from the moment ``run()`` creates it: the framework
        emits job and process lifecycle events only there, and its first processes start (and
        may fail) a minute before ``worker_started``."""
        for _ in range(60_000):  # 5 minutes: run() creates it within milliseconds
            if (pool := getattr(server, "_proc_pool", None)) is not None:  # private: no hook
                break
            await asyncio.sleep(0.005)
        else:
            return
        pool.on("process_job_launched", self._on_job_launched)
        pool.on("process_closed", self._on_job_closed)
        pool.on("process_created", self._on_process_created)
        pool.on("process_started", self._on_process_started)
        pool.on("process_ready", self._on_process_ready)
        pool.on("process_closed", self._on_process_closed)

    # A job process is started, then initialized (the agent's prewarm); the pool emits
    # "process_ready" only for one that initialized, and "process_closed" for every one that
    # ends, so a started process closed without being ready failed to start.

    def _on_process_created(self, proc: Any) -> None:
        # what the process reads in its prewarm (``jobs.prewarm``), sent with its start
        backoff = start_backoff_s(self.state.failed_starts, self.cfg.process_start_timeout_s)
        proc.user_arguments = {
            "start_backoff_s": backoff,
            "failed_starts": self.state.failed_starts,
        }

    def _on_process_started(self, proc: Any) -> None:
        self._starting.add(proc.id)

    def _on_process_ready(self, proc: Any) -> None:
        if proc.id not in self._starting:
            return
        self._starting.discard(proc.id)
        was_broken = self.state.broken
        self.state = self.state.process_started(ok=True)
        if was_broken:
            log.info("job processes start again: taking calls", extra={"job_process": proc.id})
            self._announce_capacity()

    def _on_process_closed(self, proc: Any) -> None:
        if proc.id not in self._starting:
            return  # ready before (its close is a call's end), or started before we listened
        self._starting.discard(proc.id)
        if self.state.draining:
            return  # closed by the drain, not a failure
        was_broken = self.state.broken
        self.state = self.state.process_started(ok=False)
        if self.metrics is not None:
            self.metrics.PROCESS_START_FAILURES.inc()
        else:  # before the metrics could be imported: counted at start-up
            self._early_start_failures += 1
        if self.state.broken and not was_broken:
            log.error(
                "job processes fail to start: not ready, taking no calls",
                extra={
                    "failed_in_a_row": self.state.failed_starts,
                    "agent": self.agent,
                    "hint": "see the 'error initializing process' lines above",
                },
            )
            self._announce_capacity()

    def _announce_capacity(self) -> None:
        """The load LiveKit sees changed: say so now, not at the next 2.5 s report."""
        if self.server is not None:
            self._keep(asyncio.ensure_future(announce_capacity(self.server)))

    def _keep(self, task: asyncio.Future[None]) -> None:
        """Hold a background task until it ends (the loop keeps only weak references)."""
        self._tasks_keep.add(task)
        task.add_done_callback(self._tasks_keep.discard)

    def _on_registered(self, worker_id: str, _server_info: Any) -> None:
        self._apply(self.state.register(_now()))
        log.info("registered with LiveKit", extra={"worker_id": worker_id})

    def _on_job_launched(self, proc: Any) -> None:
        job = proc.running_job
        if job is None:
            return
        self._apply(self.state.start(job.job.id, _now()))
        if self.metrics is not None:
            self.metrics.SESSIONS_STARTED.inc()
        log.info(
            "session started",
            extra={
                "room": job.job.room.name,
                "session": job.job.id,
                "participant": None,
                "active_sessions": self.state.count,
            },
        )

    def _on_job_closed(self, proc: Any) -> None:
        from livekit.agents.ipc.job_executor import JobStatus

        job = proc.running_job
        if job is None or job.job.id not in self.state.active:
            return
        failed = proc.status == JobStatus.FAILED
        (self.ended.publish if self.ended is not None else records.take)(job.job.id)
        self._apply(self.state.end(job.job.id, _now(), failed=failed))
        self._announce_capacity()  # the freed slot is offered now, not at the next 2.5 s tick
        if self.metrics is not None:
            self.metrics.SESSIONS_ENDED.inc()
            if failed:
                self.metrics.SESSIONS_FAILED.inc()
        log.info(
            "session failed" if failed else "session ended",
            extra={
                "room": job.job.room.name,
                "session": job.job.id,
                "participant": None,
                "active_sessions": self.state.count,
            },
        )

    # -- HTTP ------------------------------------------------------------------------------

    async def _start_http(self) -> None:
        from aiohttp import web

        async def healthz(_: web.Request) -> web.Response:
            if self.fatal:
                return web.Response(status=503, text=f"unhealthy: {self.fatal}\n")
            return web.Response(text="ok\n")

        async def readyz(_: web.Request) -> web.Response:
            if self.unseen:
                assert self.reporter is not None
                why = f"pod reports refused: {self.reporter.refused}"
                return web.Response(status=503, text=f"not ready ({why})\n")
            if self.state.ready and not self.fatal:
                return web.Response(text=f"ready ({self.state.state.value})\n")
            return web.Response(status=503, text=f"not ready ({self.state.unready_reason})\n")

        async def metrics_handler(_: web.Request) -> web.Response:
            if self.metrics is None:
                return web.Response(status=503, text="starting\n")
            body = await asyncio.to_thread(self.metrics.render)
            return web.Response(body=body, content_type="text/plain", charset="utf-8")

        app = web.Application()
        app.add_routes(
            [
                web.get("/healthz", healthz),
                web.get("/readyz", readyz),
                web.get("/metrics", metrics_handler),
            ]
        )
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, host="0.0.0.0", port=self.cfg.http_port)
        await site.start()
        log.info("http endpoints listening", extra={"port": self.cfg.http_port})

    # -- main loop ---------------------------------------------------------------------------

    def _build_server(self) -> AgentServer:
        from livekit.agents import AgentServer, JobExecutorType

        from . import jobs

        server = AgentServer(
            job_executor_type=(
                JobExecutorType.THREAD if self.cfg.executor == "thread" else JobExecutorType.PROCESS
            ),
            load_threshold=load_threshold(self.cfg.capacity),
            load_fnc=self.load,
            drain_timeout=self.cfg.drain_timeout_s,
            num_idle_processes=self.cfg.capacity,
            initialize_process_timeout=start_deadline_s(self.cfg.process_start_timeout_s),
            ws_url=self.cfg.livekit_url,
            api_key=self.cfg.livekit_api_key,
            api_secret=self.cfg.livekit_api_secret,
            host="127.0.0.1",
            port=self.cfg.agent_http_port,
            setup_fnc=jobs.prewarm,
            preload_modules=preload_modules(self.cfg, self.app, self.agent),
            log_level=self.cfg.log_level,
        )
        server.rtc_session(
            jobs.entrypoint, agent_name=self.cfg.agent_name, on_request=self.on_request
        )
        server.on("worker_started", self._on_started)
        server.on("worker_registered", self._on_registered)
        return server

    async def _start_pod_reporting(self) -> None:
        from . import pod

        assert self.cfg.pod_name is not None
        namespace = self.cfg.pod_namespace or "default"
        self._api = await pod.api_client()

        def count(result: str) -> None:
            if self.metrics is not None:
                self.metrics.POD_PATCHES.labels(result=result).inc()
            else:  # written before the metrics could be imported: counted at start-up
                self._early_patches.append(result)

        self.reporter = pod.PodReporter(self._api, self.cfg.pod_name, namespace, on_result=count)
        self.reporter.start()
        self.reporter.submit(PodReport("worker starting", self.state.annotations(_now())))
        self.watch = pod.DrainWatch(self._api, self.cfg.pod_name, namespace, self.request_drain)
        self.ended = records.EndedCalls(self._api, self.cfg.pod_name, namespace, self.cfg.pool)
        self.watch.start()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            return await self._run()
        finally:
            # The outcome is decided: a SIGTERM now (the pod's deletion, sent as soon as we
            # reported 0 calls) must not turn a clean exit into death by signal while Python
            # tears down. Closing the loop would restore the default action, so ignore them.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)

    async def _run(self) -> int:
        try:
            if self.cfg.pod_reporting:
                await self._start_pod_reporting()
            await self._start_http()
        except ConfigError as e:
            log.error(f"configuration error: {e}")
            await self._cleanup()
            return EXIT_CONFIG
        except OSError as e:
            log.error(f"cannot serve http on port {self.cfg.http_port}: {e}")
            await self._cleanup()
            return EXIT_CONFIG

        self.server = server = self._build_server()
        log.info(
            "worker starting",
            extra={
                "agent_name": self.cfg.agent_name,
                "capacity": self.cfg.capacity,
                "providers": {
                    "stt": ",".join(self.cfg.stt_chain),
                    "llm": ",".join(self.cfg.llm_chain),
                    "tts": ",".join(self.cfg.tts_chain),
                },
                "pod": self.cfg.pod_name,
            },
        )
        watch_pool = asyncio.create_task(self._watch_pool(server), name="pool-events")
        self._keep(watch_pool)
        run_task = asyncio.create_task(server.run(devmode=False), name="agent-server")
        drain_wait = asyncio.create_task(self._drain.wait())
        await asyncio.wait({run_task, drain_wait}, return_when=asyncio.FIRST_COMPLETED)
        code = EXIT_OK
        if run_task.done():
            drain_wait.cancel()
            self.fatal = _describe(run_task)
            log.error(f"worker stopped: {self.fatal}")
            code = EXIT_FORCED
        else:
            code = await self._drain_calls(server, run_task)
        await self._close_server(server, run_task)
        await self._cleanup()
        return code

    async def _drain_calls(self, server: AgentServer, run_task: asyncio.Task[None]) -> int:
        """Wait for the calls in progress; a second signal or the deadline cuts them."""
        if not self._server_started and self.state.count == 0 and self.pending == 0:
            # livekit-agents' drain waits for the lock its run() holds until the first call
            # processes started (up to the start deadline); before that no call can exist.
            log.info("stopping before the call processes started: no call to wait for")
            return EXIT_OK
        drain_task = asyncio.create_task(server.drain(timeout=None), name="agent-drain")
        force_wait = asyncio.create_task(self._force.wait())
        done, _ = await asyncio.wait(
            {drain_task, force_wait, run_task},
            timeout=self.cfg.drain_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        force_wait.cancel()
        active = self.state.count
        if drain_task in done and drain_task.exception() is None:
            log.info("drained: all calls finished, exiting")
            return EXIT_OK
        drain_task.cancel()
        if force_wait in done:
            log.warning(
                f"{self._force_reason}: ending {active} call(s) in progress now",
                extra={"active_sessions": active},
            )
        elif run_task in done:
            self.fatal = _describe(run_task)
            log.error(f"worker stopped while draining: {self.fatal}")
        else:
            log.warning(
                f"drain deadline of {self.cfg.drain_timeout_s}s reached: ending {active} "
                "call(s) in progress now",
                extra={"active_sessions": active},
            )
        return EXIT_FORCED

    async def _close_server(self, server: AgentServer, run_task: asyncio.Task[None]) -> None:
        if not self._server_started:
            await self._abort_start(server, run_task)
        try:
            await asyncio.wait_for(server.aclose(), CLOSE_TIMEOUT_S)
        except Exception as e:
            log.warning(f"agent server did not close cleanly: {type(e).__name__}: {e}")
        run_task.cancel()
        with contextlib.suppress(BaseException):
            await run_task

    async def _abort_start(self, server: AgentServer, run_task: asyncio.Task[None]) -> None:
        """End livekit-agents' start-up: its run() holds the lock ``aclose`` needs while the
        first call processes start, and an ``aclose`` after a cancelled start leaves those
        processes running, so cancel the start and close its process pool here (processes
        not yet started are killed at once)."""
        run_task.cancel()
        with contextlib.suppress(BaseException):
            await run_task
        pool = getattr(server, "_proc_pool", None)  # no public handle; see _watch_pool
        if pool is not None:
            try:
                await asyncio.wait_for(pool.aclose(), CLOSE_TIMEOUT_S)
            except Exception as e:
                log.warning(f"call processes did not close cleanly: {type(e).__name__}: {e}")

    async def _cleanup(self) -> None:
        if self.reporter is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reporter.flush(), 5.0)
            await self.reporter.aclose()
        if self.watch is not None:
            await self.watch.aclose()
        if self.ended is not None:
            await self.ended.flush()
        if self._api is not None:
            await self._api.close()
        if self._http is not None:
            await self._http.cleanup()


def _describe(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return "agent server cancelled"
    exc = task.exception()
    if exc is None:
        return "agent server returned"
    return f"{type(exc).__name__}: {exc}"


def _metrics_dir() -> None:
    """prometheus-client picks its multiprocess mode at import: set the dir before any import.

    Job processes observe the per-turn histograms; this process serves them all on /metrics.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="voicepool-metrics-")


def main() -> None:
    _metrics_dir()
    records.prepare()  # where call processes leave their ended calls' records
    try:
        cfg = config.load(os.environ)
        agent = agent_spec()
        app = load_app(agent)  # ConfigError: the one line below, exit 2
        if app.check is not None:
            app.check(cfg)
    except ConfigError as e:
        print(f"voicepool-worker: configuration error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CONFIG)
    static = {"pool": cfg.pool} if cfg.pool else {}
    if cfg.pod_name:
        static["pod"] = cfg.pod_name
    logs.setup(cfg.log_level, static, mask_numbers=cfg.mask_phone_numbers)
    if "voicepool_worker.metrics" in sys.modules:  # opened before livekit empties its dir
        log.warning(
            f"{agent} imports voicepool_worker.metrics as it loads: this worker's own metrics "
            "(sessions, capacity) will be missing from /metrics; import it inside the "
            "functions that use it"
        )
    if cfg.turn_detection == "smart-turn":
        from ..audio import smart_turn

        why = smart_turn.check()  # one line here, not one per call process
        if why is not None:
            log.error(f"end-of-turn model unavailable, turns end on silence alone: {why}")
    try:
        code = asyncio.run(Runtime(cfg, agent).run())
    except KeyboardInterrupt:
        code = EXIT_FORCED
    logging.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
