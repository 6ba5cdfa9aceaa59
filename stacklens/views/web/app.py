"""The ASGI app: JSON API over WebData plus the static frontend. Plotly (the maintained
charting library, zoom/pan built in) is served from the installed `plotly` Python package's
own bundled plotly.min.js: nothing is downloaded, nothing vendored in the repo."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from stacklens.errors import StacklensError
from stacklens.views.web.data import VIEWS, WebData

STATIC = Path(__file__).parent / "static"


def plotly_js() -> Path:
    import plotly
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise StacklensError(f"plotly's bundled plotly.min.js not found at {path}")
    return path


def _int(q: Request, name: str) -> int | None:
    v = q.query_params.get(name)
    return int(v) if v not in (None, "") else None


def create_app(store) -> Starlette:
    data = WebData(store)

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def static(q: Request) -> Response:
        name = q.path_params["name"]
        if name == "plotly.min.js":
            return FileResponse(plotly_js(), media_type="text/javascript")
        path = (STATIC / name).resolve()
        if path.parent != STATIC.resolve() or not path.exists():
            return JSONResponse({"error": "not found"}, status_code=404)
        return FileResponse(path)

    async def summary(_: Request) -> Response:
        return JSONResponse(data.summary())

    async def findings(_: Request) -> Response:
        return JSONResponse(data.findings())

    async def view(q: Request) -> Response:
        name = q.path_params["name"]
        if name not in VIEWS:
            return JSONResponse({"error": f"unknown view {name!r}"}, status_code=404)
        try:
            return JSONResponse(data.view(name, _int(q, "start"), _int(q, "end"), _int(q, "px") or 1000))
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    async def explain(q: Request) -> Response:
        try:
            return JSONResponse(data.explain(q.query_params.get("vm"), q.query_params.get("request")))
        except StacklensError as e:
            return JSONResponse({"error": str(e)}, status_code=404)

    return Starlette(routes=[
        Route("/", index), Route("/static/{name}", static), Route("/api/summary", summary),
        Route("/api/findings", findings), Route("/api/view/{name}", view), Route("/api/explain", explain),
    ])


def serve(store, port: int = 8765) -> None:
    import uvicorn
    uvicorn.run(create_app(store), host="127.0.0.1", port=port, log_level="warning")
