"""`stacklens client --agents FILE start|stop|status|pull`: drive many agents.

Agents file (TOML):
  [[agent]]
  name = "node1"                      # the host name its events get in the store
  url = "http://127.0.0.1:7701"       # https:// with `ca = "…"` for TLS agents
  token = "…"                         # or token_file

`pull` fetches each agent's sealed segments not fetched before into
`<spool>/<name>/<tracer>/`, then ingests them with host = name (ingest is idempotent by
content, so pulling twice adds nothing). LTTng chunk segments (`*.ctf.tar`) are unpacked
beside them and ingested as trace directories.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from stacklens.collect.config import load_toml
from stacklens.errors import StacklensError


@dataclass
class AgentRef:
    name: str
    url: str
    token: str
    ca: str | None = None

    def request(self, method: str, path: str, timeout: float = 30) -> bytes:
        req = urllib.request.Request(self.url.rstrip("/") + path, method=method,
                                     headers={"Authorization": f"Bearer {self.token}"},
                                     data=b"" if method == "POST" else None)
        ctx = ssl.create_default_context(cafile=self.ca) if self.url.startswith("https") else None
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except ValueError:
                pass
            raise StacklensError(f"agent {self.name} ({self.url}): {method} {path}: {e.code} {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise StacklensError(f"agent {self.name} ({self.url}): {getattr(e, 'reason', e)}") from None

    def json(self, method: str, path: str) -> Any:
        return json.loads(self.request(method, path))


def load_agents(path: Path) -> list[AgentRef]:
    doc = load_toml(path, "agents file")
    out = []
    for i, a in enumerate(doc.get("agent", [])):
        token = a.get("token") or (Path(a["token_file"]).read_text().strip() if "token_file" in a else None)
        if not a.get("name") or not a.get("url") or not token:
            raise StacklensError(f"{path}: agent #{i + 1} needs name, url and token (or token_file)")
        out.append(AgentRef(a["name"], a["url"], token, a.get("ca")))
    if not out:
        raise StacklensError(f"{path}: no [[agent]] entries")
    return out


def start(agents: list[AgentRef], tracers: list[str]) -> list[dict[str, Any]]:
    return [dict(agent=a.name, **a.json("POST", f"/v1/tracers/{quote(t, safe='')}/start")) for a in agents for t in tracers]


def stop(agents: list[AgentRef], tracers: list[str]) -> list[dict[str, Any]]:
    return [dict(agent=a.name, **a.json("POST", f"/v1/tracers/{quote(t, safe='')}/stop")) for a in agents for t in tracers]


def status(agents: list[AgentRef]) -> list[dict[str, Any]]:
    return [dict(agent=a.name, **a.json("GET", "/v1/status")) for a in agents]


def agents_segments(agent: AgentRef) -> list[dict[str, Any]]:
    return agent.json("GET", "/v1/segments")


def pull(agents: list[AgentRef], store_root: str, spool: Path | None = None) -> dict[str, Any]:
    from stacklens.store import Store
    from stacklens.store.ingest import ingest
    store = Store(store_root, create=True)
    spool = Path(spool) if spool else Path(store_root) / "collected"
    report: dict[str, Any] = {"agents": {}}
    for a in agents:
        fetched, paths = 0, []
        for seg in a.json("GET", "/v1/segments"):
            local = spool / a.name / seg["tracer"] / seg["name"]
            if not (local.exists() and local.stat().st_size == seg["size"]):
                data = a.request("GET", f"/v1/segments/{quote(seg['tracer'], safe='')}/{quote(seg['name'], safe='')}")
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name("." + local.name + ".tmp")
                tmp.write_bytes(data)
                tmp.replace(local)
                fetched += 1
            if local.name.endswith(CTF_CHUNK_SUFFIX):
                local = _unpack_trace_chunk(local)
            paths.append(local)
        results = ingest(store, paths, host=a.name) if paths else []
        report["agents"][a.name] = {
            "segments": len(paths), "fetched": fetched,
            "ingested": sum(1 for r in results if r.status == "ingested"),
            "rows": sum(r.rows for r in results),
            "problems": [r.to_dict() for r in results if r.status in ("rejected", "unrecognised")]}
    from stacklens.diagnose.package_versions import version_findings
    report["findings"] = version_findings(store) if _has_events(store) else []
    return report


CTF_CHUNK_SUFFIX = ".ctf.tar"  # the LTTng tracer's segments: one archived trace chunk each


def _unpack_trace_chunk(tar_path: Path) -> Path:
    """The trace directory of an LTTng chunk segment (unpacked once, beside it)."""
    import shutil
    import tarfile
    dest = tar_path.with_name(tar_path.name[: -len(CTF_CHUNK_SUFFIX)])
    if not dest.is_dir():
        tmp = tar_path.with_name("." + dest.name + ".unpack")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with tarfile.open(tar_path) as tar:
                tar.extractall(tmp, filter="data")  # no absolute paths, links out, devices
        except (tarfile.TarError, OSError) as e:
            raise StacklensError(f"{tar_path}: not a readable trace chunk: {e}") from None
        tmp.replace(dest)
    return dest


def _has_events(store) -> bool:
    try:
        return bool(store.event_files())
    except Exception:
        return False
