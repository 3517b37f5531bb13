"""Ended calls, from the job process that hosted them to a ``CallEnded`` Event on the pod.

The control service keeps nothing in memory, and a call's room is gone once it ends; so an
ended call stays readable where both of the service's replicas find it: a Kubernetes Event
(events.k8s.io/v1) on the worker's own pod, labelled with the room (``room_label``) and its
SID, the final record in an annotation. Events expire with the apiserver's ``--event-ttl``
(1 h by default), which bounds what is kept; the durable record is the job's ``call ended``
log line. The job process writes its record to a file as it shuts down (``write``); the main
process, which holds the pod's API client, turns it into the Event when livekit-agents reports
the job's process closed (``EndedCalls``). The chart lets a worker create exactly such Events,
about its own pod (docs/control.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

from voicepool_contract import GROUP, KIND, VERSION
from voicepool_contract import control as names
from voicepool_contract.phone import mask_numbers_in

log = logging.getLogger("voicepool.worker.records")

#: Where job processes leave their final records for the main process (set by ``prepare``).
ENV_DIR = "VOICEPOOL_CALL_RECORDS_DIR"


def prepare() -> None:
    """Main process, before any job process starts: a private directory for the records."""
    if not os.environ.get(ENV_DIR):
        os.environ[ENV_DIR] = tempfile.mkdtemp(prefix="voicepool-calls-")


def _path(job_id: str) -> Path | None:
    folder = os.environ.get(ENV_DIR)
    if not folder:
        return None
    return Path(folder) / (re.sub(r"[^A-Za-z0-9_.-]", "_", job_id)[:120] + ".json")


def write(job_id: str, record: dict[str, Any], room: str) -> None:
    """Job process: leave the final record (and the real room name) for the main process."""
    path = _path(job_id)
    if path is None:
        return
    try:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"room": room, "record": record}))
        tmp.replace(path)
    except OSError as e:
        log.warning("ended call record not written", extra={"error": str(e)})


def take(job_id: str) -> tuple[str, dict[str, Any]] | None:
    """Main process: the job's record (and room), removed from the directory; None if none."""
    path = _path(job_id)
    if path is None:
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    if not isinstance(raw, dict) or not isinstance(raw.get("record"), dict):
        return None
    return str(raw.get("room", "")), raw["record"]


def event_body(
    room: str, record: dict[str, Any], *, pod: str, namespace: str, pool: str
) -> dict[str, Any]:
    """The ``CallEnded`` Event for one ended call (events.k8s.io/v1), about the pod."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ttfw = record.get("ttfw") or {}
    note = (
        f"call {mask_numbers_in(room)} ended after {float(record.get('duration_s') or 0):.0f}s"
        f" ({record.get('end_reason', '')}): {record.get('turns', 0)} answered turns, time to "
        f"first word p50 {ttfw.get('p50')}s, last {ttfw.get('last')}s"
    )
    labels = {names.LABEL_ROOM: names.room_label(room)}
    sid = str(record.get("sid") or "")
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,61}[A-Za-z0-9]", sid):
        labels[names.LABEL_ROOM_SID] = sid
    if pool:
        labels[names.LABEL_POOL] = pool
    body: dict[str, Any] = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {
            "name": f"{pod}.call-{names.room_label(room)[:12]}{secrets.token_hex(3)}",
            "namespace": namespace,
            "labels": labels,
            "annotations": {names.ANN_CALL_RECORD: json.dumps(record, separators=(",", ":"))},
        },
        "eventTime": now,
        "action": names.CALL_ENDED_REASON,
        "reason": names.CALL_ENDED_REASON,
        "note": note[:1024],
        "type": "Normal",
        "reportingController": f"{GROUP}/worker",
        "reportingInstance": pod[:128],
        "regarding": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": namespace},
    }
    if pool:
        body["related"] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": pool,
            "namespace": namespace,
        }
    return body


class EndedCalls:
    """Main process: one ``CallEnded`` Event per ended call, written in the background."""

    def __init__(self, api_client: Any, pod: str, namespace: str, pool: str) -> None:
        self._api, self.pod, self.namespace, self.pool = api_client, pod, namespace, pool
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused: str | None = None
        self.written = 0

    def publish(self, job_id: str) -> None:
        taken = take(job_id)
        if taken is None or self.refused is not None:
            return
        task = asyncio.ensure_future(self._write(*taken))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, room: str, record: dict[str, Any]) -> None:
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        body = event_body(room, record, pod=self.pod, namespace=self.namespace, pool=self.pool)
        try:
            events = client.EventsV1Api(self._api)
            await events.create_namespaced_event(self.namespace, body)  # type: ignore[arg-type]
            self.written += 1
        except ApiException as e:
            if e.status in (401, 403):  # say so once; calls keep their log line
                self.refused = f"{e.status} {e.reason}"
                log.error(
                    "ended calls are not recorded: this pod's ServiceAccount may not create "
                    "their Events (use the chart's worker ServiceAccount); each call's log line "
                    "remains",
                    extra={"status": e.status, "error": str(e.reason)},
                )
            else:
                log.warning("ended call Event not written", extra={"error": f"{e.status}"})
        except Exception as e:  # network trouble: the log line remains
            log.warning("ended call Event not written", extra={"error": f"{type(e).__name__}"})

    async def flush(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
