"""``voicepool-devstack conformance -- CMD...``: does a worker keep the pool's contract?

docs/worker-contract.md says what any worker, in any language, must do to be scheduled safely;
this kit checks it from the outside, against the local stack's real kube-apiserver and
livekit-server. It creates a Pod object for the worker to report on (nothing runs it: the
command is started here, as a process, with the environment the operator would set), watches
every change of that pod, places WebRTC calls through LiveKit with the synthetic caller and
drains the worker, first by the operator's annotation, then (a second run) by SIGTERM alone.

Each step prints one line (pass or fail, its time); the first failure names the missing step
and ends the run (exit 1). The checks on what was observed are pure functions at the top; the
processes, the pod watch and the calls are below them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from voicepool_contract import (
    ANN_CAPACITY,
    ANN_DRAIN,
    ANN_DRAIN_REASON,
    ANN_DRAIN_REQUESTED_AT,
    ANN_KWOK_REPORT,
    ANN_REPORTED_AT,
    ANN_SESSIONS,
    ANN_STATE,
    ENV_AGENT_NAME,
    ENV_DRAIN_TIMEOUT,
    ENV_HTTP_PORT,
    ENV_LIVEKIT_API_KEY,
    ENV_LIVEKIT_API_SECRET,
    ENV_LIVEKIT_URL,
    ENV_POD_NAME,
    ENV_POD_NAMESPACE,
    ENV_POOL,
    ENV_SESSIONS_PER_POD,
    KWOK_REPORT_NONE,
    REPORTED_KEYS,
)

from .livekit import LiveKitInfo
from .ports import free_port

if TYPE_CHECKING:
    from kubernetes import client

CONTRACT_DOC = "docs/worker-contract.md"
#: Annotations the kit itself writes on the pod (the operator's part): never the worker's.
OPERATOR_KEYS = (ANN_DRAIN, ANN_DRAIN_REASON, ANN_DRAIN_REQUESTED_AT, ANN_KWOK_REPORT)
#: Variables of the devstack's own that must not leak into the worker under test.
DEVSTACK_ENV = (
    "VOICEPOOL_KUBECONFIG",
    "VOICEPOOL_LIVEKIT_URL",
    "VOICEPOOL_LIVEKIT_API_KEY",
    "VOICEPOOL_LIVEKIT_API_SECRET",
    "PROMETHEUS_MULTIPROC_DIR",
)
#: Gauges the pool's dashboards and alerts read from every worker's /metrics.
REQUIRED_METRICS = ("voicepool_worker_active_sessions", "voicepool_worker_capacity")
EXIT_PASSED, EXIT_FAILED = 0, 1


# -- what was observed, and the pure checks on it ----------------------------------------------


@dataclass(frozen=True)
class Observed:
    """The pod's annotations as one watch event showed them, with the local arrival time."""

    at: float  # time.monotonic()
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class Step:
    """One line of the kit's output."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""


class StepFailed(Exception):
    """A step's check failed; the message says what the worker did not do."""


def format_step(step: Step) -> str:
    """``PASS  reports starting .......  0.3 s  state=starting``: fixed columns, one line."""
    word = "PASS" if step.ok else "FAIL"
    line = f"{word}  {step.name:<60} {step.seconds:5.1f} s"
    return f"{line}  {step.detail}" if step.detail else line


def worker_env(
    base: Mapping[str, str],
    *,
    pod: str,
    namespace: str,
    kubeconfig: str,
    livekit: LiveKitInfo,
    agent: str,
    capacity: int,
    http_port: int,
    drain_timeout_s: int,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment the operator gives a worker pod (podtemplate.py), on top of ``base``.

    ``KUBECONFIG`` stands in for the pod's service account (no kubelet runs it here); ``extra``
    is what a pool's ``spec.template.env`` adds and wins, as it does there.
    """
    env = {k: v for k, v in base.items() if k not in DEVSTACK_ENV}
    env.update(
        {
            ENV_POD_NAME: pod,
            ENV_POD_NAMESPACE: namespace,
            ENV_LIVEKIT_URL: livekit.url,
            ENV_LIVEKIT_API_KEY: livekit.api_key,
            ENV_LIVEKIT_API_SECRET: livekit.api_secret,
            ENV_AGENT_NAME: agent,
            ENV_POOL: "conformance",
            ENV_SESSIONS_PER_POD: str(capacity),
            ENV_DRAIN_TIMEOUT: str(drain_timeout_s),
            ENV_HTTP_PORT: str(http_port),
            "KUBECONFIG": kubeconfig,
        }
    )
    env.update(extra or {})
    return env


def reports(history: Sequence[Observed]) -> list[Observed]:
    """The events that carry a state report, in order (the worker's writes)."""
    return [o for o in history if ANN_STATE in o.annotations]


def first_report(history: Sequence[Observed], since: float = 0.0, **want: str) -> Observed | None:
    """The first report at or after ``since`` whose annotations match ``want`` (state=...,
    sessions=...)."""
    keys = {"state": ANN_STATE, "sessions": ANN_SESSIONS, "capacity": ANN_CAPACITY}
    for o in reports(history):
        if o.at >= since and all(o.annotations.get(keys[k]) == v for k, v in want.items()):
            return o
    return None


def check_boot_reports(history: Sequence[Observed], capacity: int) -> str | None:
    """None when the worker's first report is ``starting`` with the whole set, else why not."""
    seen = reports(history)
    if not seen:
        return (
            f"the worker never reported on its pod (missing step: a merge-patch of {ANN_STATE}="
            f'"starting", {ANN_SESSIONS}, {ANN_CAPACITY} and {ANN_REPORTED_AT} first thing at '
            "boot)"
        )
    first = seen[0].annotations
    if first.get(ANN_STATE) != "starting":
        return (
            f"its first report was {ANN_STATE}={first.get(ANN_STATE)!r} (missing step: report "
            '"starting" before registering with LiveKit)'
        )
    return check_report_set(first, capacity)


def check_report_set(annotations: Mapping[str, str], capacity: int) -> str | None:
    """Every report carries all four keys, the declared capacity and an RFC 3339 UTC time."""
    missing = [k for k in REPORTED_KEYS if k not in annotations]
    if missing:
        return f"a report without {', '.join(missing)} (all four are written in one merge-patch)"
    if annotations[ANN_CAPACITY] != str(capacity):
        return (
            f"{ANN_CAPACITY}={annotations[ANN_CAPACITY]!r}, but {ENV_SESSIONS_PER_POD} is "
            f"{capacity} (the worker must announce the capacity the pool gave it)"
        )
    stamp = annotations[ANN_REPORTED_AT]
    if not (stamp.endswith("Z") and "T" in stamp):
        return f"{ANN_REPORTED_AT}={stamp!r} is not an RFC 3339 UTC time like 2026-01-02T03:04:05Z"
    return None


def over_capacity(history: Sequence[Observed], capacity: int) -> Observed | None:
    """A report of more sessions than the worker may hold, if any."""
    for o in reports(history):
        with contextlib.suppress(ValueError):
            if int(o.annotations.get(ANN_SESSIONS, "0")) > capacity:
                return o
    return None


def foreign_changes(initial: Mapping[str, str], history: Sequence[Observed]) -> list[str]:
    """Annotations the worker changed beyond its four reports (the chart's admission policy
    refuses those in a cluster; the operator's keys are written by the kit itself)."""
    allowed = set(REPORTED_KEYS) | set(OPERATOR_KEYS)
    changed: set[str] = set()
    for o in history:
        for key in set(initial) | set(o.annotations):
            if key not in allowed and initial.get(key) != o.annotations.get(key):
                changed.add(key)
    return sorted(changed)


# -- the pod, the worker process, the calls -----------------------------------------------------


class PodWatch:
    """Every change of one pod's annotations, stamped on arrival (a thread, bounded waits)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, name: str) -> None:
        self.core, self.namespace, self.name = core, namespace, name
        self.history: list[Observed] = []
        self.initial: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._listed.wait(30):
            raise StepFailed(f"could not watch pod {self.namespace}/{self.name}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def snapshot(self) -> list[Observed]:
        with self._lock:
            return list(self.history)

    def _record(self, pod: Any) -> None:
        annotations = dict(pod.metadata.annotations or {})
        with self._lock:
            last = self.history[-1].annotations if self.history else self.initial
            if annotations != last:
                self.history.append(Observed(time.monotonic(), annotations))

    def _run(self) -> None:
        from kubernetes import watch

        selector = f"metadata.name={self.name}"
        listed: Any = self.core.list_namespaced_pod(self.namespace, field_selector=selector)
        self.initial = dict(listed.items[0].metadata.annotations or {}) if listed.items else {}
        version = listed.metadata.resource_version
        self._listed.set()
        while not self._stop.is_set():
            w = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in w.stream(  # type: ignore[no-untyped-call]
                    self.core.list_namespaced_pod,
                    self.namespace,
                    field_selector=selector,
                    resource_version=version,
                    timeout_seconds=2,
                ):
                    obj = event["object"]
                    version = obj.metadata.resource_version
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(obj)
                    if self._stop.is_set():
                        break
            except Exception:  # expired version or a dropped connection: list again
                if self._stop.is_set():
                    break
                time.sleep(0.2)
                with contextlib.suppress(Exception):
                    again: Any = self.core.list_namespaced_pod(
                        self.namespace, field_selector=selector
                    )
                    version = again.metadata.resource_version
                    for pod in again.items:
                        self._record(pod)
            finally:
                w.stop()  # type: ignore[no-untyped-call]

    async def wait_for(
        self, probe: Callable[[list[Observed]], Observed | None], within: float
    ) -> Observed | None:
        """The first observation ``probe`` accepts within ``within`` seconds, or None."""
        deadline = time.monotonic() + within
        while True:
            found = probe(self.snapshot())
            if found is not None or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(0.02)


class WorkerUnderTest:
    """The command, started with the pod's environment in its own process group."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.http_port = int(env[ENV_HTTP_PORT])
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                list(command),
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def get(self, path: str) -> tuple[int, str]:
        """An HTTP GET on the worker's port: (status, body); (0, "") when nothing answers."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return int(r.status), r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode(errors="replace")
        except OSError:
            return 0, ""

    async def wait_status(self, path: str, status: int, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if (await asyncio.to_thread(self.get, path))[0] == status:
                return True
            if self.proc.poll() is not None:
                return False
            await asyncio.sleep(0.1)
        return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """To the command's own process, as the kubelet signals a container's PID 1."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    async def wait_exit(self, within: float) -> int | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.1)
        return None

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Nothing of the command survives the kit, whatever happened."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@dataclass
class Options:
    """What to run and how patient to be (the defaults are the contract's numbers)."""

    command: Sequence[str]
    #: 2: during the drain one call is in progress and a slot is free, so only the drain can
    #: keep a new call away (at capacity 1 a full worker refuses it anyway).
    capacity: int = 2
    extra_env: Mapping[str, str] = field(default_factory=dict)
    boot_timeout_s: float = 180.0  # to the idle report: models load, LiveKit registers
    #: The "starting" report comes first thing, before any model loads: the operator counts
    #: a pod that never reported as no capacity (and after unreadyGraceSeconds, Degraded).
    first_report_within_s: float = 20.0
    report_within_s: float = 1.0  # a call's start and end reach the pod within this
    #: The end is seen from outside when the agent leaves the room; the worker's session then
    #: still closes (livekit-agents' AgentSession took 2.2 s for the receptionist), and the
    #: 1 s counts from the end of that close-down, which may take this long.
    close_grace_s: float = 3.0
    refuse_wait_s: float = 6.0  # a call beyond capacity (or while draining) is not answered
    hold_s: float = 3.0  # the call in progress goes on this long into the drain
    drain_timeout_s: int = 120
    exit_timeout_s: float = 60.0
    sigterm_run: bool = True
    log_dir: Path | None = None


class Conformance:
    """One run of the kit: the steps in order, each printed as it ends."""

    def __init__(
        self,
        opts: Options,
        core: client.CoreV1Api,
        kubeconfig: str,
        livekit: LiveKitInfo,
        out: TextIO,
    ) -> None:
        self.opts = opts
        self.core = core
        self.kubeconfig = kubeconfig
        self.livekit = livekit
        self.out = out
        self.steps: list[Step] = []
        self.namespace = f"conformance-{uuid.uuid4().hex[:6]}"
        self.agent = f"conformance-{uuid.uuid4().hex[:8]}"
        self.log_dir = opts.log_dir or Path(tempfile.mkdtemp(prefix="voicepool-conformance-"))
        self.worker: WorkerUnderTest | None = None
        self.watch: PodWatch | None = None

    # -- the step runner -------------------------------------------------------------------

    async def step(self, name: str, check: Callable[[], Awaitable[str]]) -> None:
        """Run one check; print its line; a failure stops the run (StepFailed propagates)."""
        t0 = time.monotonic()
        try:
            detail = await check()
        except StepFailed as e:
            self._print(Step(name, False, time.monotonic() - t0, str(e)))
            raise
        self._print(Step(name, True, time.monotonic() - t0, detail))

    def _print(self, step: Step) -> None:
        self.steps.append(step)
        print(format_step(step), file=self.out, flush=True)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> int:
        from .testing import create_namespace

        print(
            f"conformance of: {' '.join(self.opts.command)}  (capacity {self.opts.capacity}; "
            f"logs in {self.log_dir})",
            file=self.out,
            flush=True,
        )
        await asyncio.to_thread(create_namespace, self.core, self.namespace)
        try:
            await self._annotation_run()
            if self.opts.sigterm_run:
                await self._sigterm_run()
        except StepFailed as e:
            last = self.steps[-1] if self.steps else None
            failed = last.name if last is not None and not last.ok else "setting up the run"
            print(f"conformance: FAILED at {failed!r}: {e}", file=self.out, flush=True)
            if self.worker is not None:
                print(f"--- worker log ({self.worker.log_path}), last lines ---", file=self.out)
                print(self.worker.tail(), file=self.out, flush=True)
            return EXIT_FAILED
        finally:
            self._stop_worker()
            with contextlib.suppress(Exception):
                self.core.delete_namespace(self.namespace, propagation_policy="Background")
        print(
            f"conformance: PASSED ({len(self.steps)} steps; see {CONTRACT_DOC})",
            file=self.out,
            flush=True,
        )
        return EXIT_PASSED

    def _stop_worker(self) -> None:
        if self.watch is not None:
            self.watch.stop()
            self.watch = None
        if self.worker is not None:
            self.worker.stop()

    async def _boot(self, pod: str) -> tuple[WorkerUnderTest, PodWatch]:
        """A fresh Pod object to report on, its watch, and the command started for it."""
        from kubernetes import client

        self._stop_worker()
        body = client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=pod,
                labels={"app.kubernetes.io/name": "voicepool-conformance"},
                # no kwok stage may report in the worker's place
                annotations={ANN_KWOK_REPORT: KWOK_REPORT_NONE},
            ),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="worker", image="conformance.invalid/w:0")]
            ),
        )
        await asyncio.to_thread(self.core.create_namespaced_pod, self.namespace, body)
        self.watch = watch = PodWatch(self.core, self.namespace, pod)
        await asyncio.to_thread(watch.start)
        env = worker_env(
            os.environ,
            pod=pod,
            namespace=self.namespace,
            kubeconfig=self.kubeconfig,
            livekit=self.livekit,
            agent=self.agent,
            capacity=self.opts.capacity,
            http_port=free_port(),
            drain_timeout_s=self.opts.drain_timeout_s,
            extra=self.opts.extra_env,
        )
        self.worker = worker = WorkerUnderTest(self.opts.command, env, self.log_dir / f"{pod}.log")
        return worker, watch

    async def _wait_idle(self, worker: WorkerUnderTest, watch: PodWatch) -> Observed:
        idle = await watch.wait_for(
            lambda h: first_report(h, state="idle", sessions="0"), self.opts.boot_timeout_s
        )
        if idle is None:
            if not worker.alive():
                raise StepFailed(f"the worker exited with code {worker.proc.returncode} at boot")
            raise StepFailed(
                f'no {ANN_STATE}="idle" report within {self.opts.boot_timeout_s:.0f} s (missing '
                "step: once registered with LiveKit, report idle with sessions 0)"
            )
        return idle

    async def _annotation_run(self) -> None:
        worker, watch = await self._boot("worker-drain-annotation")
        t_boot = time.monotonic()
        cap = self.opts.capacity

        async def starting() -> str:
            seen = await watch.wait_for(
                lambda h: reports(h)[0] if reports(h) else None, self.opts.first_report_within_s
            )
            if seen is None and not worker.alive():
                raise StepFailed(
                    f"the worker exited with code {worker.proc.returncode} before any report"
                )
            why = check_boot_reports(watch.snapshot(), cap)
            if why:
                raise StepFailed(why)
            assert seen is not None
            return f"{seen.at - t_boot:.1f} s after start"

        async def idle() -> str:
            report = await self._wait_idle(worker, watch)
            why = check_report_set(report.annotations, cap)
            if why:
                raise StepFailed(why)
            return f"{report.at - t_boot:.1f} s after start"

        async def ready() -> str:
            if not await worker.wait_status("/readyz", 200, 10):
                raise StepFailed(
                    f"/readyz on {ENV_HTTP_PORT} is not 200 while idle (missing step: answer "
                    "200 once registered and not draining)"
                )
            return "/readyz 200"

        async def metrics() -> str:
            status, body = await asyncio.to_thread(worker.get, "/metrics")
            if status != 200:
                raise StepFailed(f"/metrics answered {status or 'nothing'}, not 200")
            missing = [m for m in REQUIRED_METRICS if not _has_sample(body, m)]
            if missing:
                raise StepFailed(f"/metrics lacks {', '.join(missing)}")
            return ", ".join(REQUIRED_METRICS)

        await self.step("reports starting at boot", starting)
        await self.step("reports idle once registered", idle)
        await self.step("ready on /readyz", ready)
        await self.step("serves /metrics", metrics)

        from livekit import api

        async with api.LiveKitAPI(
            self.livekit.http_url, self.livekit.api_key, self.livekit.api_secret
        ) as lk:
            calls = _Calls(self.livekit, self.agent, lk)
            try:
                await self._calls_and_capacity(worker, watch, calls)
                await self._drain(worker, watch, calls, by_annotation=True)
            finally:
                await calls.close()

        async def clean() -> str:
            foreign = foreign_changes(watch.initial, watch.snapshot())
            if foreign:
                raise StepFailed(
                    f"the worker changed {', '.join(foreign)}: a worker writes its four "
                    "report annotations and nothing else on its pod"
                )
            return "only the four report annotations"

        await self.step("touches nothing on its pod but its reports", clean)

    async def _calls_and_capacity(
        self, worker: WorkerUnderTest, watch: PodWatch, calls: _Calls
    ) -> None:
        cap, within = self.opts.capacity, self.opts.report_within_s
        placed: list[Any] = []

        async def answered() -> str:
            t0 = time.monotonic()
            placed.append(await calls.place(join_within=30))
            return f"agent joined {time.monotonic() - t0:.1f} s after the dispatch"

        async def start_reported() -> str:
            joined = calls.joined_at[-1]
            n = str(len(placed))
            report = await watch.wait_for(
                lambda h: first_report(h, sessions=n, state="busy"),
                within + 5,
            )
            if report is None or report.at - joined > within:
                late = "never" if report is None else f"{report.at - joined:.1f} s after"
                raise StepFailed(
                    f"sessions={n}, state=busy reported {late} the agent joined (missing step: "
                    f"one merge-patch per session start, within {within:.0f} s)"
                )
            return f"{max(0.0, report.at - joined):.2f} s after the agent joined"

        await self.step("registers with LiveKit: a dispatched call is answered", answered)
        await self.step("reports the call's start within 1 s", start_reported)
        for i in range(2, cap + 1):
            await self.step(f"takes call {i} of its capacity {cap}", answered)
            await self.step(f"reports call {i}'s start within 1 s", start_reported)

        async def refuses() -> str:
            if await calls.unanswered(self.opts.refuse_wait_s):
                return f"no agent joined within {self.opts.refuse_wait_s:.0f} s"
            raise StepFailed(
                f"an agent answered call {cap + 1} while {cap} were in progress (missing "
                f"step: announce load so LiveKit sends no job beyond {ENV_SESSIONS_PER_POD}, "
                "and reject any job request beyond it)"
            )

        async def never_over() -> str:
            bad = over_capacity(watch.snapshot(), cap)
            if bad is not None:
                raise StepFailed(f"reported {bad.annotations[ANN_SESSIONS]} sessions over {cap}")
            return f"never more than {cap}"

        await self.step(f"refuses a call beyond its capacity ({cap})", refuses)
        await self.step("reports no more sessions than its capacity", never_over)

        async def end_reported() -> str:
            t_hangup = time.monotonic()
            for c in placed:
                await calls.hang_up(c)
            left = await calls.agents_left(placed, within=30)
            report = await watch.wait_for(
                lambda h: first_report(h, since=t_hangup, sessions="0", state="idle"), 30
            )
            if left is None:
                raise StepFailed("the agent stayed in the room 30 s after the caller hung up")
            allowed = within + self.opts.close_grace_s
            if report is None or report.at - left > allowed:
                late = "never" if report is None else f"{report.at - left:.1f} s after"
                raise StepFailed(
                    f"sessions=0, state=idle reported {late} the agent left the call (missing "
                    f"step: one merge-patch per session end, within {within:.0f} s of it; "
                    f"{self.opts.close_grace_s:.0f} s are allowed for the session to close)"
                )
            return (
                f"{max(0.0, report.at - left):.2f} s after the agent left "
                f"({report.at - t_hangup:.1f} s after the hang-up)"
            )

        ended = "the call's end" if cap == 1 else "the calls' end"
        await self.step(f"reports {ended} within 1 s (+ close-down)", end_reported)

    async def _drain(
        self, worker: WorkerUnderTest, watch: PodWatch, calls: _Calls, *, by_annotation: bool
    ) -> None:
        how = "the drain annotation" if by_annotation else "SIGTERM"
        ongoing: list[Any] = []

        async def call_in_progress() -> str:
            await worker.wait_status("/readyz", 200, 10)
            ongoing.append(await calls.place(join_within=30))
            return "answered"

        t_drain = 0.0

        async def drains() -> str:
            nonlocal t_drain
            t_drain = time.monotonic()
            if by_annotation:
                await asyncio.to_thread(self._annotate_drain, watch.name)
            else:
                worker.signal(signal.SIGTERM)
            report = await watch.wait_for(
                lambda h: first_report(h, since=t_drain, state="draining"), 10
            )
            if report is None:
                raise StepFailed(
                    f'no {ANN_STATE}="draining" report within 10 s of {how} (missing step: '
                    "report draining at once)"
                )
            if not await worker.wait_status("/readyz", 503, 10):
                raise StepFailed(f"/readyz still not 503 10 s after {how}")
            return f"draining reported {report.at - t_drain:.2f} s after it; /readyz 503"

        async def no_new_calls() -> str:
            if await calls.unanswered(self.opts.refuse_wait_s):
                note = " (capacity 1: it is full anyway)" if self.opts.capacity == 1 else ""
                return f"no agent joined within {self.opts.refuse_wait_s:.0f} s{note}"
            raise StepFailed(
                f"a new call was answered after {how} (missing step: a draining worker takes "
                "no new call)"
            )

        async def keeps_call() -> str:
            extra = []
            if by_annotation:  # a SIGTERM in the middle of a drain cuts nothing either
                worker.signal(signal.SIGTERM)
                extra.append("SIGTERM during the drain")
            deadline = time.monotonic() + self.opts.hold_s
            while time.monotonic() < deadline:
                if not worker.alive():
                    raise StepFailed(
                        f"the worker exited (code {worker.proc.returncode}) with a call in "
                        f"progress after {how} (missing step: finish the calls, then exit)"
                    )
                if not await calls.agent_present(ongoing[0]):
                    raise StepFailed(f"the agent left a call in progress after {how}")
                await asyncio.sleep(0.3)
            return f"the agent stayed {self.opts.hold_s:.0f} s" + (
                f" ({extra[0]})" if extra else ""
            )

        async def exits() -> str:
            t0 = time.monotonic()
            for c in ongoing:
                await calls.hang_up(c)
            code = await worker.wait_exit(self.opts.exit_timeout_s)
            if code is None:
                raise StepFailed(
                    f"still running {self.opts.exit_timeout_s:.0f} s after its last call ended "
                    "(missing step: exit once drained)"
                )
            if code != 0:
                raise StepFailed(f"exit code {code} (a drained worker exits 0)")
            return f"exit 0, {time.monotonic() - t0:.1f} s after the hang-up"

        await self.step(f"[{how}] a call in progress", call_in_progress)
        await self.step(f"[{how}] reports draining, /readyz 503", drains)
        await self.step(f"[{how}] takes no new call", no_new_calls)
        await self.step(f"[{how}] does not cut the call in progress", keeps_call)
        await self.step(f"[{how}] exits 0 once its last call ended", exits)

    async def _sigterm_run(self) -> None:
        """A second worker drained by SIGTERM alone (a node drain or a deletion sends it)."""
        worker, watch = await self._boot("worker-sigterm")

        async def booted() -> str:
            t0 = time.monotonic()
            await self._wait_idle(worker, watch)
            return f"idle {time.monotonic() - t0:.1f} s after start"

        await self.step("[SIGTERM] a second worker boots to idle", booted)
        from livekit import api

        async with api.LiveKitAPI(
            self.livekit.http_url, self.livekit.api_key, self.livekit.api_secret
        ) as lk:
            calls = _Calls(self.livekit, self.agent, lk)
            try:
                await self._drain(worker, watch, calls, by_annotation=False)
            finally:
                await calls.close()

    def _annotate_drain(self, pod: str) -> None:
        """What the operator writes to drain a pod."""
        self.core.patch_namespaced_pod(
            pod,
            self.namespace,
            {"metadata": {"annotations": {ANN_DRAIN: "true", ANN_DRAIN_REASON: "conformance"}}},
        )


def _has_sample(body: str, name: str) -> bool:
    return any(line.startswith((name + " ", name + "{")) for line in body.splitlines())


class _Calls:
    """WebRTC calls to the agent under test through livekit-server (the synthetic caller)."""

    def __init__(self, livekit: LiveKitInfo, agent: str, lk: Any) -> None:
        self.livekit, self.agent, self.lk = livekit, agent, lk
        self.open: list[Any] = []
        self.joined_at: list[float] = []

    def _call(self, prefix: str) -> Any:
        from voicepool_worker.caller import Call, CallerConfig

        lk = self.livekit
        cfg = CallerConfig(lk.url, lk.api_key, lk.api_secret, self.agent, identity="caller")
        return Call(cfg, f"{prefix}-{uuid.uuid4().hex[:6]}")

    async def place(self, *, join_within: float) -> Any:
        """A call the agent answered (joined and published its audio)."""
        c = self._call("conf")
        self.open.append(c)
        try:
            await c.start(join_within=join_within)
        except TimeoutError:
            raise StepFailed(
                f"no agent answered a dispatched call within {join_within:.0f} s (missing step: "
                f"register with LiveKit under {ENV_AGENT_NAME} and accept the job)"
            ) from None
        self.joined_at.append(time.monotonic())
        return c

    async def unanswered(self, within: float) -> bool:
        """Dispatch one more call; True when no agent joined it within ``within`` seconds. Its
        room is deleted afterwards, so the dispatch is not taken later by a freed slot."""
        from livekit import api

        c = self._call("refused")
        try:
            await c.start(join_within=within)
            return False
        except TimeoutError:
            return True
        finally:
            await c.hangup()
            with contextlib.suppress(Exception):
                await self.lk.room.delete_room(api.DeleteRoomRequest(room=c.room_name))

    async def agent_present(self, c: Any) -> bool:
        from livekit import api

        listed = await self.lk.room.list_participants(api.ListParticipantsRequest(room=c.room_name))
        return any(p.identity == c.agent_identity for p in listed.participants)

    async def hang_up(self, c: Any) -> None:
        if c in self.open:
            self.open.remove(c)
            await c.hangup()

    async def agents_left(self, placed: Sequence[Any], within: float) -> float | None:
        """When the last agent of ``placed`` had left its room (polled), or None."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            present = [await self.agent_present(c) for c in placed]
            if not any(present):
                return time.monotonic()
            await asyncio.sleep(0.05)
        return None

    async def close(self) -> None:
        for c in list(self.open):
            with contextlib.suppress(Exception):
                await self.hang_up(c)


# -- where the stack comes from ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    kubeconfig: str
    livekit: LiveKitInfo


@contextlib.contextmanager
def stack(workdir: Path) -> Iterator[Target]:
    """The stack ``up`` recorded in ``workdir``; else ``VOICEPOOL_KUBECONFIG`` and
    ``VOICEPOOL_LIVEKIT_*`` as the tests take them; else a temporary one (kube-apiserver and
    livekit-server only), stopped afterwards."""
    from .stack import STATE_FILE, StackState
    from .testing import environment

    state_path = workdir / STATE_FILE
    if state_path.exists():
        state = StackState.load(state_path)
        if state.kubeconfig and state.livekit:
            yield Target(state.kubeconfig, state.livekit)
            return
    with environment(nodes=1, sip=False, prometheus=False) as env:
        yield Target(env.kubeconfig, env.livekit)


def run(opts: Options, workdir: Path, out: TextIO) -> int:
    """The whole kit on the stack in ``workdir`` (or one of its own): 0 passed, 1 failed."""
    from kubernetes import client, config

    with stack(workdir) as target:
        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=target.kubeconfig, client_configuration=cfg
        )
        with client.ApiClient(cfg) as api_client:
            core = client.CoreV1Api(api_client)
            kit = Conformance(opts, core, target.kubeconfig, target.livekit, out)
            return asyncio.run(kit.run())
