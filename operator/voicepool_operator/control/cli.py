"""``voicepool calls ...``: the control service from a terminal (docs/control.md).

    voicepool calls list [-n NS] POOL            live calls, a kubectl-like table (-o json)
    voicepool calls show ROOM                    one call and its per-turn latencies
    voicepool calls events ROOM                  follow the call's events until it ends
    voicepool calls listen ROOM [--takeover]     a LiveKit URL and token to hear (or speak in) it
    voicepool calls hangup ROOM [--after-reply]
    voicepool calls transfer ROOM TARGET [--warm]
    voicepool calls say|instruct ROOM TEXT
    voicepool calls mute|unmute ROOM
    voicepool calls dial [-n NS] POOL NUMBER [--opening TEXT]

The service's URL and token come from ``--url``/``--token`` or ``VOICEPOOL_CONTROL_URL``/
``VOICEPOOL_CONTROL_TOKEN``; the URL defaults to the local stack's (``http://127.0.0.1:8095``,
also where ``kubectl port-forward svc/voicepool-control 8095`` puts the chart's). Standard
library only, so it starts fast. Exit 0 on success, 1 when the service refused (its message is
printed), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any, TextIO

from .calls import table

DEFAULT_URL = "http://127.0.0.1:8095"
TIMEOUT_S = 30.0


class Failed(Exception):
    """The service refused (or could not be reached); the message says why."""


class Client:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            try:
                why = json.loads(e.read()).get("error") or e.reason
            except ValueError:
                why = e.reason
            hint = ""
            if e.code == 401 and not self.token:
                hint = " (set --token or VOICEPOOL_CONTROL_TOKEN)"
            extra = (
                f"; retry after {e.headers['Retry-After']}s" if e.headers.get("Retry-After") else ""
            )
            raise Failed(f"{e.code}: {why}{hint}{extra}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Failed(f"cannot reach the control service at {self.url}: {reason}") from None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self._request(method, path, body, TIMEOUT_S) as resp:
            return json.loads(resp.read() or b"{}")

    def stream(self, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Server-sent events as (event, data) until the stream ends."""
        with self._request("GET", path, None, None) as resp:
            kind, data = "message", ""
            for raw in resp:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if not line:
                    if data:
                        yield kind, json.loads(data)
                    kind, data = "message", ""
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()


def _pool_path(pool: str, namespace: str) -> str:
    ns, _, name = pool.rpartition("/")
    ns = ns or namespace
    return f"/v1/pools/{urllib.parse.quote(ns, safe='')}/{urllib.parse.quote(name, safe='')}/calls"


def _room_path(room: str, suffix: str = "", pool: str | None = None) -> str:
    path = f"/v1/calls/{urllib.parse.quote(room, safe='')}{suffix}"
    return path + (f"?pool={urllib.parse.quote(pool, safe='/')}" if pool else "")


def _clock(t: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(float(t)).strftime("%H:%M:%S")
    except (TypeError, ValueError):
        return "--:--:--"


def describe(event: dict[str, Any]) -> str:
    """One line per event for a person following a call."""
    kind = event.get("kind", "")
    rest = {k: v for k, v in event.items() if k not in ("seq", "t", "kind")}
    if kind == "turn" and "latency" in rest:
        lat = rest.pop("latency")
        stages = " ".join(f"{k}={float(v) * 1000:.0f}ms" for k, v in lat.items())
        rest["latency"] = stages
    fields = " ".join(f"{k}={v}" for k, v in rest.items())
    return f"{_clock(event.get('t'))}  #{event.get('seq', '-')}  {kind:<8} {fields}".rstrip()


def show_text(call: dict[str, Any], out: TextIO) -> None:
    keys = ("room", "sid", "pool", "pod", "state", "direction", "caller", "started", "muted")
    for key in (*keys, "takeover", "turns", "ended", "duration_s", "end_reason"):
        if call.get(key) not in (None, ""):
            value = _clock(call[key]) if key in ("started", "ended") else call[key]
            print(f"{key + ':':<12}{value}", file=out)
    ttfw = call.get("ttfw") or {}
    if ttfw:
        parts = [f"{k} {float(v) * 1000:.0f}ms" for k, v in ttfw.items() if v is not None]
        print(f"{'ttfw:':<12}{', '.join(parts) or '-'}", file=out)
    turns = call.get("turn_latencies") or []
    if turns:
        stages = ("transcript", "end_of_turn", "llm_ttft", "tts_ttfb", "ttfw")
        rows = [
            {"turn": t.get("turn"), **{s: t.get(s) for s in stages}, "at": _clock(t.get("t"))}
            for t in turns
        ]
        cols = [("TURN", "turn"), ("AT", "at")] + [(s.upper().replace("_", "-"), s) for s in stages]
        print("", file=out)
        print(_latency_table(rows, cols), file=out)


def _latency_table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    def ms(key: str, value: Any) -> Any:
        if key != "turn" and isinstance(value, int | float):
            return f"{float(value) * 1000:.0f}ms"
        return value

    return table([{k: ms(k, v) for k, v in r.items()} for r in rows], cols)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voicepool", description="voicepool from a terminal")
    p.add_argument("--url", default=os.environ.get("VOICEPOOL_CONTROL_URL", DEFAULT_URL))
    p.add_argument("--token", default=os.environ.get("VOICEPOOL_CONTROL_TOKEN"))
    top = p.add_subparsers(dest="group", required=True)
    c = top.add_parser("calls", help="list, show, follow, hear and steer calls")
    sub = c.add_subparsers(dest="cmd", required=True)

    def room_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_)
        s.add_argument("room", help="the call's room name or SID (RM_...)")
        s.add_argument("--pool", help="<namespace>/<pool>: only a call of this pool")
        s.add_argument("-o", "--output", choices=("text", "json"), default="text")
        return s

    ls = sub.add_parser("list", help="a pool's live calls")
    ls.add_argument("pool", help="<pool> or <namespace>/<pool>")
    ls.add_argument("-n", "--namespace", default=os.environ.get("VOICEPOOL_NAMESPACE", "default"))
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table")
    room_cmd("show", "one call, with per-turn latencies")
    room_cmd("events", "follow a call's events until it ends")
    li = room_cmd("listen", "a token to hear the call (hidden)")
    li.add_argument("--takeover", action="store_true", help="speak instead of the agent")
    li.add_argument("--release", action="store_true", help="end a takeover: the agent speaks")
    h = room_cmd("hangup", "end the call")
    h.add_argument("--after-reply", action="store_true", help="once the agent finished speaking")
    t = room_cmd("transfer", "transfer the caller")
    t.add_argument("target", help="sip:user@host or tel:+<number> (warm: a number)")
    t.add_argument("--warm", action="store_true", help="dial the colleague in and brief them")
    for verb in ("say", "instruct"):
        s = room_cmd(verb, f"{verb} a sentence" if verb == "say" else "add an instruction")
        s.add_argument("text", nargs="+")
        if verb == "instruct":
            s.add_argument("--respond", action="store_true", help="and reply now")
    room_cmd("mute", "the agent stops speaking and listening")
    room_cmd("unmute", "the agent speaks and listens again")
    d = sub.add_parser("dial", help="an outbound call from a pool")
    d.add_argument("pool", help="<pool> or <namespace>/<pool>")
    d.add_argument("number", help="E.164, e.g. +15550100")
    d.add_argument("--opening", help="the agent's first sentence")
    d.add_argument("-n", "--namespace", default=os.environ.get("VOICEPOOL_NAMESPACE", "default"))
    d.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return p


def run(args: argparse.Namespace, out: TextIO) -> None:
    client = Client(args.url, args.token)
    cmd = args.cmd
    as_json = getattr(args, "output", "") == "json"
    if cmd == "list":
        result = client.call("GET", _pool_path(args.pool, args.namespace))
        if as_json:
            print(json.dumps(result, indent=2), file=out)
        elif result.get("calls"):
            print(table(result["calls"]), file=out)
        else:
            print(f"No live calls in pool {result.get('pool')}.", file=out)
        return
    if cmd == "dial":
        body = {"number": args.number, **({"opening": args.opening} if args.opening else {})}
        result = client.call("POST", _pool_path(args.pool, args.namespace), body)
        msg = (
            f"dialling {result.get('to')} from pool {result.get('pool')}: room {result.get('room')}"
        )
        print(json.dumps(result, indent=2) if as_json else msg, file=out)
        return
    if cmd == "events":
        for kind, data in client.stream(_room_path(args.room, "/events", args.pool)):
            if as_json:
                print(json.dumps({"event": kind, **data}), file=out, flush=True)
            elif kind == "ended":
                print(f"call ended ({(data.get('call') or {}).get('end_reason', '')})", file=out)
            else:
                print(describe(data) if "seq" in data else f"{kind}: {data}", file=out, flush=True)
        return
    if cmd == "show":
        result = client.call("GET", _room_path(args.room, "", args.pool))
        if as_json:
            print(json.dumps(result, indent=2), file=out)
        else:
            show_text(result.get("call") or {}, out)
        return
    if cmd == "listen":
        verb = "takeover" if args.takeover or args.release else "listen"
        body = {"release": True} if args.release else {}
        result = client.call("POST", _room_path(args.room, f"/{verb}", args.pool), body)
        if as_json or args.release:
            print(json.dumps(result, indent=2), file=out)
        else:
            print(f"url:        {result['url']}\nidentity:   {result['identity']}", file=out)
            print(f"expires:    {_clock(result['expires'])} (join before)", file=out)
            print(f"token:      {result['token']}", file=out)
            print("Join with any LiveKit client (URL + token).", file=out)
            if args.takeover:
                print("The agent is muted until: voicepool calls listen --release ROOM", file=out)
        return
    body = {}
    if cmd == "hangup":
        body = {"after_reply": args.after_reply}
    elif cmd == "transfer":
        body = {"to": args.target, "warm": args.warm}
    elif cmd in ("say", "instruct"):
        body = {"text": " ".join(args.text)}
        if cmd == "instruct":
            body["respond"] = args.respond
    result = client.call("POST", _room_path(args.room, f"/{cmd}", args.pool), body)
    if as_json:
        print(json.dumps(result, indent=2), file=out)
    else:
        done = "accepted" if result.get("status") == 202 else "done"
        print(f"{cmd} {result.get('room', args.room)}: {done}", file=out)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run(args, sys.stdout)
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
