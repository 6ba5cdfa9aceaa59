"""OpenTelemetry export in the protocol's own encoding (OTLP), not the SDK's debug JSON.

A tree of stacklens.analyses.explain (a request or a VM) becomes one trace:

* OTLP/JSON (`TracesData`: resourceSpans → scopeSpans → spans) as the OTLP specification
  encodes it: trace and span ids as hex strings, times as decimal strings of ns since the
  epoch, int64 attribute values as strings, enums as integers, attributes as key/value lists;
* one resource per (service, host): `service.name` is the OpenStack service that ran the
  span (nova-compute, nova-scheduler, …; bare RPC topics like `compute` are Nova's), QEMU for
  the virtualization layer, the kernel for kernel threads; `host.name` the node;
* OTLP/HTTP: the same request as protobuf (`ExportTraceServiceRequest`) POSTed to
  `<endpoint>/v1/traces`.

Ids are derived from the request id (or the root's label) and the span's position in the
tree, so exporting the same request twice gives the same trace.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from typing import Any

from stacklens import __version__ as STACKLENS_VERSION
from stacklens.analyses.explain import Node
from stacklens.errors import StacklensError

# OTLP enum values (opentelemetry/proto/trace/v1/trace.proto)
SPAN_KIND_INTERNAL, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER = 1, 3, 4
STATUS_CODE_UNSET, STATUS_CODE_OK, STATUS_CODE_ERROR = 0, 1, 2

# RPC topics and workers of Nova (the thesis and firehose records name them bare)
NOVA_SERVICES = {"api", "conductor", "scheduler", "compute", "network", "cert", "consoleauth", "novncproxy",
                 "osapi_compute", "metadata"}
LAYER_SERVICES = {"virt": "qemu", "kernel": "linux-kernel"}


def openstack_service(name: str | None, task: str | None = None) -> str | None:
    """`compute.host1` / `compute` → `nova-compute`; `volume` (or a `volume.*` task) →
    `cinder-volume`; names that already say their project (nova-api, neutron-server) stay."""
    if not name:
        return None
    base = name.split(".", 1)[0].split(":", 1)[0]
    if "-" in base:
        return base
    if base == "volume" or (task or "").startswith(("volume.", "snapshot.", "backup.")):
        return f"cinder-{base}"
    if base in ("dhcp", "l3", "metering") or base.startswith("q-"):
        return f"neutron-{base}-agent"
    if base in NOVA_SERVICES:
        return f"nova-{base}"
    return base


def _any_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}  # int64 is a JSON string in OTLP/JSON
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [_any_value(x) for x in v]}}
    if isinstance(v, dict):
        return {"stringValue": json.dumps(v, default=str, sort_keys=True)}
    return {"stringValue": str(v)}


def _attributes(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any_value(v)} for k, v in attrs.items() if v is not None]


def _hex_id(seed: str, n_bytes: int) -> str:
    h = hashlib.sha256(seed.encode()).digest()[:n_bytes]
    if not any(h):  # all-zero ids are invalid in OTLP
        h = b"\x01" + h[1:]
    return h.hex()


def _node_service(n: Node, inherited: str | None) -> str | None:
    if n.kind in ("service", "span") and n.attrs.get("service"):
        return openstack_service(n.attrs["service"], n.label if n.kind == "span" else None)
    if n.kind == "span" and n.attrs.get("worker"):
        return openstack_service(n.attrs["worker"], n.label)
    if n.kind == "hop" and n.attrs.get("caller"):
        return openstack_service(n.attrs["caller"])
    if n.layer in LAYER_SERVICES:
        return LAYER_SERVICES[n.layer]
    return inherited


def _entry_service(root: Node) -> str:
    """The service a request entered through: the caller of its first RPC hop, else the
    service of its first span."""
    hops = sorted((c for c in root.children if c.kind == "hop" and c.start is not None), key=lambda c: c.start)
    if hops and hops[0].attrs.get("caller"):
        return openstack_service(hops[0].attrs["caller"]) or "openstack"
    spans = sorted(((d, n) for d, n in root.walk() if n.kind == "span" and n.start is not None),
                   key=lambda x: x[1].start)
    for _, n in spans:
        s = _node_service(n, None)
        if s:
            return s
    return "openstack"


def traces_data(roots: list[Node]) -> dict[str, Any]:
    """OTLP/JSON `TracesData` for the trees: one trace per root."""
    resources: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for root in roots:
        seed = root.attrs.get("request_id") or root.label
        trace_id = _hex_id(f"trace:{seed}", 16)
        counter = 0

        def emit(n: Node, parent_id: str | None, service: str | None, host: str | None,
                 parent_start: int | None) -> None:
            nonlocal counter
            service = _node_service(n, service)
            host = n.host if n.host and n.host != "unknown" else host
            start = n.start if n.start is not None else parent_start
            end = n.end if n.end is not None and start is not None and n.end >= start else start
            span_id = _hex_id(f"span:{seed}:{counter}", 8)
            counter += 1
            attrs = {"stacklens.layer": n.layer, "stacklens.kind": n.kind} | {
                f"stacklens.{k}" if k in ("service",) else k: v for k, v in n.attrs.items()}
            kind = SPAN_KIND_INTERNAL
            if n.kind == "hop":
                kind = SPAN_KIND_CLIENT if "call" in n.label.split()[1:2] else SPAN_KIND_PRODUCER
                attrs |= {"rpc.system": "oslo.messaging", "messaging.system": "rabbitmq"}
            span: dict[str, Any] = {"traceId": trace_id, "spanId": span_id, "name": n.label, "kind": kind,
                                    "startTimeUnixNano": str(start or 0), "endTimeUnixNano": str(end or start or 0),
                                    "attributes": _attributes(attrs)}
            if parent_id:
                span["parentSpanId"] = parent_id
            outcome = n.attrs.get("outcome")
            if outcome == "error" or n.attrs.get("failure") or n.kind == "problem":
                span["status"] = {"code": STATUS_CODE_ERROR, "message": str(n.attrs.get("failure") or outcome or n.label)[:200]}
            elif outcome == "ok":
                span["status"] = {"code": STATUS_CODE_OK}
            resources.setdefault((service or "openstack", host), []).append(span)
            for c in n.children:
                emit(c, span_id, service, host, start)

        emit(root, None, _entry_service(root), root.host, root.start)
    return {"resourceSpans": [
        {"resource": {"attributes": _attributes({"service.name": svc, "host.name": host,
                                                 "service.namespace": "openstack"})},
         "scopeSpans": [{"scope": {"name": "stacklens", "version": STACKLENS_VERSION}, "spans": spans}]}
        for (svc, host), spans in resources.items()]}


def span_count(doc: dict[str, Any]) -> int:
    return sum(len(ss["spans"]) for rs in doc["resourceSpans"] for ss in rs["scopeSpans"])


def _ids_as_base64(doc: dict[str, Any]) -> dict[str, Any]:
    """OTLP/JSON writes ids in hex, protobuf's JSON mapping reads bytes as base64: the copy
    handed to json_format has its ids re-encoded so that the protobuf carries 16/8 bytes."""
    import base64
    out = json.loads(json.dumps(doc))
    for rs in out["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for sp in ss["spans"]:
                for k in ("traceId", "spanId", "parentSpanId"):
                    if sp.get(k):
                        sp[k] = base64.b64encode(bytes.fromhex(sp[k])).decode()
    return out


def send_otlp_http(doc: dict[str, Any], endpoint: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """POST the traces as OTLP/HTTP protobuf to `endpoint` (`…/v1/traces` appended when the
    URL has no path); returns what the collector answered (status, rejected spans)."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                          ExportTraceServiceResponse)
    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    body = json_format.ParseDict(_ids_as_base64(doc), ExportTraceServiceRequest()).SerializeToString()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        raise StacklensError(f"OTLP endpoint {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise StacklensError(f"OTLP endpoint {url}: {getattr(e, 'reason', e)}") from None
    rejected = 0
    if payload:
        try:
            answer = ExportTraceServiceResponse.FromString(payload)
            rejected = answer.partial_success.rejected_spans
        except Exception:  # a collector may answer with an empty or JSON body
            rejected = 0
    return {"url": url, "http_status": status, "spans": span_count(doc), "rejected_spans": int(rejected)}
