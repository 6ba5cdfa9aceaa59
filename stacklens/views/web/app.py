"""The ASGI app: JSON API over WebData plus the static frontend. Plotly (the maintained
charting library, zoom/pan built in) is served from the installed `plotly` Python package's
own bundled plotly.min.js: nothing is downloaded, nothing vendored in the repo.

Safe edges (the API reads a whole trace store, so a web page must not be able to read it):
  * Host header check: only loopback names, the bind name and names given with --allow-host,
    each with or without the served port, else 403 — a DNS-rebinding page (evil.example
    resolving to 127.0.0.1) sends its own name in Host and is refused;
  * a token (--token or STACKLENS_UI_TOKEN), required when bound beyond loopback: given once
    as ?token=… (then kept in an HttpOnly, SameSite=Strict cookie) or as `Authorization: Bearer`;
  * every query parameter is parsed strictly (int64 range, start < end) and file names are
    plain names: bad input gets 400 with a one-line message, never a 500;
  * views run in worker threads with a time limit (VIEW_TIME_LIMIT_S): the event loop keeps
    serving, and a view that takes too long answers 503 "too slow" (its result, when it
    finishes, is cached for the next request).
"""

from __future__ import annotations

import hmac
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import anyio
import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from stacklens.errors import StacklensError
from stacklens.views.web.data import VIEWS, BadParam, WebData

STATIC = Path(__file__).parent / "static"
STATIC_FILES = ("app.js", "style.css", "index.html")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
TOKEN_ENV = "STACKLENS_UI_TOKEN"
TOKEN_COOKIE = "stacklens_token"
VIEW_TIME_LIMIT_S = float(os.environ.get("STACKLENS_UI_TIME_LIMIT", "20"))  # seconds
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
_INT = re.compile(r"-?[0-9]{1,19}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}")


def plotly_js() -> Path:
    import plotly
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise StacklensError(f"plotly's bundled plotly.min.js not found at {path}")
    return path


def int_param(q: Request, name: str, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int | None:
    """An optional integer parameter in [lo, hi]; anything else (NaN, inf, 1e3, 2^63) → BadParam."""
    v = q.query_params.get(name)
    if v is None or v == "":
        return None
    if not _INT.fullmatch(v):
        raise BadParam(f"parameter {name!r}: {v[:40]!r} is not an integer")
    n = int(v)
    if not lo <= n <= hi:
        raise BadParam(f"parameter {name!r}: {n} is outside [{lo}, {hi}]")
    return n


def window_params(q: Request, *, closed: bool = False) -> tuple[int | None, int | None]:
    """start and end, both or neither; start < end (start <= end for a closed window: the
    events at one instant)."""
    start, end = int_param(q, "start"), int_param(q, "end")
    if (start is None) != (end is None):
        raise BadParam("parameters 'start' and 'end' go together")
    if start is not None and (start > end if closed else start >= end):
        raise BadParam(f"window start {start} is not before end {end}")
    return start, end


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


def _host_name(value: str) -> tuple[str, str | None]:
    """'name:port' / '[::1]:port' / 'name' → (lower-case name, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else None
    name, sep, port = value.rpartition(":")
    return (name, port) if sep else (value, None)


class Guard:
    """ASGI middleware: the Host check and the token, before any route runs."""

    def __init__(self, app, *, allowed_hosts: set[str], port: int | None, token: str | None) -> None:
        self.app, self.allowed, self.port, self.token = app, allowed_hosts, port, token

    def host_ok(self, host_header: str) -> bool:
        name, port = _host_name(host_header)
        if name not in self.allowed:
            return False
        return port is None or self.port is None or port == str(self.port)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self.host_ok(headers.get("host", "")):
            resp: Response = JSONResponse({"error": f"Host {headers.get('host', '')[:80]!r} is not served here "
                                                    "(allowed: " + ", ".join(sorted(self.allowed)) + ")"},
                                          status_code=403)
            return await resp(scope, receive, send)
        set_cookie = False
        if self.token:
            req = Request(scope)
            given = req.cookies.get(TOKEN_COOKIE) or ""
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if req.query_params.get("token"):
                given, set_cookie = req.query_params["token"], True
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                resp = JSONResponse({"error": "a token is required: open the URL printed by `stacklens ui` "
                                              "(…/?token=…) or send 'Authorization: Bearer <token>'"},
                                    status_code=401)
                return await resp(scope, receive, send)

        if set_cookie and scope["path"] == "/":  # the token leaves the address bar (and history)
            resp = Response(status_code=303, headers={
                "location": "/", "set-cookie": f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"})
            return await resp(scope, receive, send)

        async def send_with_cookie(message) -> None:
            if set_cookie and message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
            await send(message)
        await self.app(scope, receive, send_with_cookie)


async def _off_loop(fn: Callable[[], Any], what: str) -> Response:
    """Run fn in a worker thread within VIEW_TIME_LIMIT_S; 503 with a clear message when it
    does not finish in time (the thread is left to finish and fill the cache)."""
    try:
        with anyio.fail_after(VIEW_TIME_LIMIT_S):
            body = await anyio.to_thread.run_sync(lambda: _json_bytes(fn()), abandon_on_cancel=True)
    except TimeoutError:
        return JSONResponse({"error": f"too slow: {what} took more than {VIEW_TIME_LIMIT_S:.0f} s; "
                                      "try a narrower window (it goes on in the background: retry later)"},
                            status_code=503)
    except BadParam as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    except StacklensError as e:
        return JSONResponse({"error": str(e)}, status_code=404)
    except Exception as e:  # a bug, not bad input: one line for the browser, not a traceback page
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return JSONResponse({"error": f"internal error in {what}: {type(e).__name__}: {first}"}, status_code=500)
    return Response(body, media_type="application/json")


def _json_bytes(result: Any) -> bytes:
    """The answer as JSON, encoded in the worker thread (not on the event loop) by orjson: a
    whole-trace kernel view of ~30 k bars takes ~6 ms there against ~75 ms with json.dumps.
    What orjson refuses (integers beyond 64 bits, non-string keys) goes through json."""
    try:
        return orjson.dumps(result)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode()


def create_app(store, *, bind: str = "127.0.0.1", port: int | None = None, token: str | None = None,
               allowed_hosts: tuple[str, ...] = (), prepare: bool = False) -> Any:
    data = WebData(store)
    if prepare:  # the first kernel host's stored intervals opened, or built, before it is asked for
        data.prepare_kernel()

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def static(q: Request) -> Response:
        name = q.path_params["name"]
        if not _FILE_NAME.fullmatch(name):
            return JSONResponse({"error": f"bad file name {name[:60]!r}"}, status_code=400)
        if name == "plotly.min.js":
            return FileResponse(plotly_js(), media_type="text/javascript")
        if name not in STATIC_FILES:
            return JSONResponse({"error": f"no file {name!r}"}, status_code=404)
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})

    async def favicon(_: Request) -> Response:
        return Response(status_code=204)

    async def summary(_: Request) -> Response:
        return await _off_loop(data.summary, "the summary")

    async def findings(_: Request) -> Response:
        return await _off_loop(data.findings, "the findings")

    async def view(q: Request) -> Response:
        name = q.path_params["name"]
        if name not in VIEWS:
            return JSONResponse({"error": f"unknown view {name[:60]!r}"}, status_code=404)
        try:
            start, end = window_params(q)
            px = int_param(q, "px", 1, 100_000) or 1000
            offset = int_param(q, "offset", 0, 10_000_000) or 0
        except BadParam as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        host = q.query_params.get("host") or None
        return await _off_loop(lambda: data.view_json(name, start, end, px, host=host, offset=offset),
                               f"the {name} view")

    async def events(q: Request) -> Response:
        try:
            start, end = window_params(q, closed=True)
            if start is None:
                raise BadParam("parameters 'start' and 'end' are required")
            tid = int_param(q, "tid")
            cpu = int_param(q, "cpu", 0, 1_000_000)
            limit = int_param(q, "limit", 1, 5000) or 500
        except BadParam as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        p = q.query_params
        return await _off_loop(lambda: data.events(start, end, host=p.get("host") or None, tid=tid, cpu=cpu,
                                                   request_id=p.get("request_id") or None, vm=p.get("vm") or None,
                                                   text=p.get("q") or None, limit=limit), "the events query")

    async def explain(q: Request) -> Response:
        vm, request = q.query_params.get("vm"), q.query_params.get("request")
        if not vm and not request:
            return JSONResponse({"error": "give vm=… or request=…"}, status_code=400)
        return await _off_loop(lambda: data.explain(vm, request), "the explanation")

    allowed = {*LOOPBACK_NAMES, bind.lower(), *(h.lower() for h in allowed_hosts)}
    app = Starlette(routes=[
        Route("/", index), Route("/static/{name}", static), Route("/api/summary", summary),
        Route("/api/findings", findings), Route("/api/view/{name}", view), Route("/api/events", events),
        Route("/api/explain", explain), Route("/favicon.ico", favicon),
    ])
    return Guard(app, allowed_hosts=allowed, port=port, token=token)


def resolve_token(bind: str, token: str | None) -> str | None:
    """The token to require: --token, else $STACKLENS_UI_TOKEN; bound beyond loopback without
    one is refused (anyone on the network could read the store)."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(bind) and not token:
        raise StacklensError(f"--host {bind} serves beyond this machine: give --token (or ${TOKEN_ENV})")
    if token is not None and len(token) < 8:
        raise StacklensError("the UI token must have at least 8 characters")
    return token


def serve(store, port: int = 8765, *, bind: str = "127.0.0.1", token: str | None = None,
          allowed_hosts: tuple[str, ...] = ()) -> None:
    import uvicorn
    app = create_app(store, bind=bind, port=port, token=token, allowed_hosts=allowed_hosts, prepare=True)
    uvicorn.run(app, host=bind, port=port, log_level="warning")
