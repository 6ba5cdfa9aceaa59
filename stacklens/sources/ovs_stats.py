"""Open vSwitch userspace datapath: sampled `ovs-appctl` statistics and the ovs-vswitchd log.

Sample file (JSON lines, written by the lab / an agent's OvS sampler), one object per sample
holding OvS's verbatim command output and the sampling time (ns since the epoch):

    {"ovs_sample_ns": 1795273826012854000, "appctl": {"dpctl/show": "netdev@ovs-netdev:\\n
      lookups: hit:645 missed:9 lost:0\\n  flows: 9\\n  port 0: ovs-netdev (tap)\\n …",
      "upcall/show": "…", "dpif-netdev/pmd-stats-show": "…", "coverage/show": "…"}}
    {"ovs_sample_ns": …, "interfaces": [<rows of `ovs-vsctl --format=json list Interface`
      as objects: name, ofport, external_ids{…}, …>]}

Rows: `ovs_datapath` (datapath, hit, missed, lost, flows, ports{number: name}),
`ovs_upcall_stats` (flows_current/avg/max/limit, dump_duration_ms), `ovs_pmd_stats` (one per
PMD/main thread: packets_received, emc_hits, smc_hits, megaflow_hits, miss_success,
miss_failed, …), `ovs_coverage` (every counter's total), `ovs_interface` (one per Interface
row: name, ofport, external_ids), `ovs_command` (a command the sampler itself issued, e.g.
`{"ovs_sample_ns": …, "command": "revalidator/purge", "issued_ns": …}`).

ovs-vswitchd log (`--log-file`, `vlog` default pattern `%D{%Y-%m-%dT%H:%M:%S.###Z}|%05N|%c|%p|%m`):
every record becomes `ovs.<module>` (level, message); a `dpif_netdev` DBG "miss upcall:" record
(enabled with `vlog/set dpif_netdev:file:dbg`) becomes `ovs_miss_upcall` with the flow key
parsed (in_port, eth_src, eth_dst, eth_type, ip_src, ip_dst, ip_proto): one per upcall.

Samples are a few per second and logs small: lines are parsed one by one.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from stacklens.errors import SourceError
from stacklens.sources.base import Reader
from stacklens.sources.timefmt import fits_int64

_DP_HEAD = re.compile(r"^(\S+@\S+):$")
_LOOKUPS = re.compile(r"lookups: hit:(\d+) missed:(\d+) lost:(\d+)")
_FLOWS = re.compile(r"^\s+flows: (\d+)")
_PORT = re.compile(r"^\s+port (\d+): (\S+)")
_UPCALL_FLOWS = re.compile(r"flows\s*: \(current (\d+)\) \(avg (\d+)\) \(max (\d+)\) \(limit (\d+)\)")
_DUMP = re.compile(r"dump duration : (\d+)ms")
_PMD_HEAD = re.compile(r"^(pmd thread numa_id \d+ core_id \d+|main thread):$")
_PMD_ITEM = re.compile(r"^\s+([a-z][a-z .()/-]*?):\s+([0-9.]+)")
_COVERAGE = re.compile(r"^(\w+)\s+.*total: (\d+)$")


class OvsStatsReader(Reader):
    """JSON lines of sampled ovs-appctl output (and the Interface table)."""

    format = "ovs-appctl"
    layer = "virt"
    unit = "line"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        return head.lstrip().startswith(b'{"ovs_sample_ns"')

    def tables(self) -> Iterator[pa.Table]:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise SourceError(self.path, f"cannot read: {e.strerror}") from None
        ts, names, fields, pos = [], [], [], []

        def add(t: int, name: str, body: dict, i: int) -> None:
            ts.append(t)
            names.append(name)
            fields.append(json.dumps(body))
            pos.append(i)

        for i, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                msg = json.loads(raw)
                t = int(msg["ovs_sample_ns"])
                issued = int(msg.get("issued_ns", t)) if msg.get("command") else t
            except (ValueError, KeyError, TypeError, OverflowError):
                self.report.skip(i)
                continue
            if not (fits_int64(t) and fits_int64(issued)):
                self.report.skip_out_of_range([i])
                continue
            appctl = msg.get("appctl") or {}
            if "dpctl/show" in appctl:
                for body in parse_dpctl_show(appctl["dpctl/show"]):
                    add(t, "ovs_datapath", body, i)
            if "upcall/show" in appctl:
                body = parse_upcall_show(appctl["upcall/show"])
                if body:
                    add(t, "ovs_upcall_stats", body, i)
            if "dpif-netdev/pmd-stats-show" in appctl:
                for body in parse_pmd_stats(appctl["dpif-netdev/pmd-stats-show"]):
                    add(t, "ovs_pmd_stats", body, i)
            if "coverage/show" in appctl:
                add(t, "ovs_coverage", parse_coverage(appctl["coverage/show"]), i)
            if msg.get("command"):  # a reconfiguration the sampler issued (e.g. revalidator/purge)
                add(issued, "ovs_command", {"command": str(msg["command"])}, i)
            for row in msg.get("interfaces") or []:
                add(t, "ovs_interface", row, i)
        self.options.progress(len(data))
        if not ts:
            return
        self.report.rows += len(ts)
        yield pa.table({"ts": pa.array(ts, pa.int64()), "name": pa.array(names, pa.string()),
                        "procname": pa.repeat(pa.scalar("ovs-vswitchd", pa.string()), len(ts)),
                        "fields": pa.array(fields, pa.string()), "pos": pa.array(pos, pa.int64())})


def parse_dpctl_show(text: str) -> list[dict]:
    """`ovs-appctl dpctl/show`: per datapath its lookup counters, flow count and ports."""
    out: list[dict] = []
    for line in text.splitlines():
        m = _DP_HEAD.match(line)
        if m:
            out.append({"datapath": m.group(1), "ports": {}})
            continue
        if not out:
            continue
        if m := _LOOKUPS.search(line):
            out[-1].update(hit=int(m.group(1)), missed=int(m.group(2)), lost=int(m.group(3)))
        elif m := _FLOWS.match(line):
            out[-1]["flows"] = int(m.group(1))
        elif m := _PORT.match(line):
            out[-1]["ports"][m.group(1)] = m.group(2)
    return [d for d in out if "hit" in d]


def parse_upcall_show(text: str) -> dict:
    body: dict = {}
    if m := _UPCALL_FLOWS.search(text):
        body.update(flows_current=int(m.group(1)), flows_avg=int(m.group(2)),
                    flows_max=int(m.group(3)), flows_limit=int(m.group(4)))
    if m := _DUMP.search(text):
        body["dump_duration_ms"] = int(m.group(1))
    return body


def parse_pmd_stats(text: str) -> list[dict]:
    """`dpif-netdev/pmd-stats-show`: one object per thread, keys in snake case."""
    out: list[dict] = []
    for line in text.splitlines():
        if m := _PMD_HEAD.match(line):
            out.append({"thread": m.group(1)})
        elif out and (m := _PMD_ITEM.match(line)):
            key = re.sub(r"[^a-z0-9]+", "_", m.group(1).strip()).strip("_")
            key = {"miss_with_success_upcall": "miss_success", "miss_with_failed_upcall": "miss_failed"}.get(key, key)
            value = m.group(2)
            out[-1][key] = float(value) if "." in value else int(value)
    return out


def parse_coverage(text: str) -> dict:
    return {m.group(1): int(m.group(2)) for line in text.splitlines() if (m := _COVERAGE.match(line))}


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# time|sequence|module, or module(thread) for lines of a thread other than the main one|level|message
_LOG_LINE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?)Z\|(\d+)\|(\w+)(?:\(([^)|]*)\))?\|"
                       rb"(EMER|ERR|WARN|INFO|DBG)\|(.*)$")
_KEY_ITEMS = {
    "in_port": re.compile(r"in_port\(([^)]*)\)"),
    "eth": re.compile(r"eth\(src=([0-9a-f:]+),dst=([0-9a-f:]+)\)"),
    "eth_type": re.compile(r"eth_type\((0x[0-9a-f]+)\)"),
    "ip": re.compile(r"ipv[46]\(src=([^,]+),dst=([^,]+),proto=(\d+)"),
}


class OvsLogReader(Reader):
    """ovs-vswitchd's own log file; DBG miss upcalls become one event per upcall."""

    format = "ovs-vswitchd.log"
    layer = "virt"
    unit = "line"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        lines = [ln for ln in head.splitlines()[:10] if ln.strip()]
        return bool(lines) and sum(1 for ln in lines if _LOG_LINE.match(ln)) >= (len(lines) + 1) // 2

    def tables(self) -> Iterator[pa.Table]:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise SourceError(self.path, f"cannot read: {e.strerror}") from None
        records: list[list] = []  # [ts, module, level, message, line number, thread]
        dropped = False  # the record being continued was skipped: its continuation lines go too
        for i, raw in enumerate(data.split(b"\n"), start=1):
            m = _LOG_LINE.match(raw)
            if m:
                dropped = True
                try:
                    t = dt.datetime.fromisoformat(m.group(1).decode()).replace(tzinfo=dt.timezone.utc)
                except ValueError:
                    self.report.skip(i)
                    continue
                ns = (t - _EPOCH) // dt.timedelta(microseconds=1) * 1000
                if not fits_int64(ns):
                    self.report.skip_out_of_range([i])
                    continue
                dropped = False
                records.append([ns, m.group(3).decode(), m.group(5).decode(),
                                m.group(6).decode("utf-8", "replace"), i,
                                m.group(4).decode("utf-8", "replace") if m.group(4) else None])
            elif raw.strip():
                if records and not dropped:  # a continuation line (flow keys, packet dumps)
                    records[-1][3] += "\n" + raw.decode("utf-8", "replace")
                elif not dropped:
                    self.report.skip(i)
        self.options.progress(len(data))
        if not records:
            return
        names, fields = [], []
        for ns, module, level, message, _, thread in records:
            if module == "dpif_netdev" and "miss upcall:" in message:
                names.append("ovs_miss_upcall")
                fields.append(json.dumps(parse_flow_key(message)))
            else:
                names.append(f"ovs.{module}")
                fields.append(json.dumps({"level": level, "message": message} |
                                         ({"thread": thread} if thread else {})))
        self.report.rows += len(records)
        yield pa.table({"ts": pa.array([r[0] for r in records], pa.int64()), "name": pa.array(names, pa.string()),
                        "procname": pa.repeat(pa.scalar("ovs-vswitchd", pa.string()), len(records)),
                        "fields": pa.array(fields, pa.string()),
                        "pos": pa.array([r[4] for r in records], pa.int64())})


def parse_flow_key(message: str) -> dict:
    """The datapath flow key of a miss upcall (the line after "miss upcall:")."""
    key_line = message.split("\n", 2)[1] if "\n" in message else ""
    body: dict = {"datapath": message.split(":", 1)[0].strip()}
    if m := _KEY_ITEMS["in_port"].search(key_line):
        body["in_port"] = m.group(1)
    if m := _KEY_ITEMS["eth"].search(key_line):
        body["eth_src"], body["eth_dst"] = m.group(1), m.group(2)
    if m := _KEY_ITEMS["eth_type"].search(key_line):
        body["eth_type"] = int(m.group(1), 16)
    if m := _KEY_ITEMS["ip"].search(key_line):
        body["ip_src"], body["ip_dst"], body["ip_proto"] = m.group(1), m.group(2), int(m.group(3))
    body["key"] = key_line
    return body
