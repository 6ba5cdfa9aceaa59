"""The stacklens web UI: a local ASGI app (starlette, served by uvicorn on 127.0.0.1)."""
