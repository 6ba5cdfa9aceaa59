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
        fetched, paths, refused = 0, [], []
        listing = a.json("GET", "/v1/segments")
        if not isinstance(listing, list):
            raise StacklensError(f"agent {a.name} ({a.url}): /v1/segments is not a list")
        for seg in listing:
            problem = segment_problem(seg)
            if problem:  # the agent's answer names where we write: only plain names, kept in the spool
                refused.append({"path": f"{a.name}: {str(seg)[:200]}", "status": "refused", "message": problem})
                continue
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
            "problems": refused + [r.to_dict() for r in results if r.status in ("rejected", "unrecognised")]}
    from stacklens.diagnose.package_versions import version_findings
    report["findings"] = version_findings(store) if _has_events(store) else []
    return report


def plain_name(name: Any) -> str | None:
    """Why `name` (from an agent's answer) cannot be one file or directory name, or None."""
    if not isinstance(name, str) or not name:
        return "not a name"
    if "\0" in name:
        return "a NUL byte in the name"
    if "/" in name or "\\" in name:
        return "a path separator in the name"
    if name in (".", ".."):
        return f"{name!r} is not a file name"
    if name.startswith("."):
        return "a hidden name (the spool's own temporary files start with '.')"
    return None


def segment_problem(seg: Any) -> str | None:
    """Why an entry of an agent's segment list cannot be fetched into the spool, or None:
    the agent's answer names the files written, so tracer and segment must be plain names
    (no absolute path, '..', separator or NUL) and the size a count of bytes."""
    if not isinstance(seg, dict):
        return "not a segment entry (an object with tracer, name, size)"
    for key in ("tracer", "name"):
        why = plain_name(seg.get(key))
        if why:
            return f"refused segment {key} {str(seg.get(key))[:80]!r}: {why}"
    size = seg.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"refused segment {seg['name']!r}: size {str(size)[:40]!r} is not a byte count"
    return None


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
