"""Application layer (issue 4) on real data: thesis LTTng Python traces, the RabbitMQ
firehose dump, Nova's notification samples, real oslo.log JSON output.

Expected values are derived here, independently of stacklens: task durations from the
timestamps babeltrace2 prints for the two events, VM states from the dump's own XML text
read with a regex, sample counts from the directory listing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stacklens.models.service_tasks import service_tasks
from stacklens.sources.base import ReadOptions
from stacklens.sources.thesis_record import parse_thesis_record
from stacklens.store import Store
from stacklens.store.ingest import ingest
from tests.conftest import ROOT, bt2_thesis_lines, need_data

NOVA = ("thesis", "nova", "lttng-traces", "auto-20160808-110105")
CINDER = ("thesis", "cinder", "lttng-traces", "auto-20160815-161656")
DUMP = ("thesis", "rabbitmq-dump")
SAMPLES = ("openstack", "nova-notification-samples")


def bt2_thesis_records(trace: Path) -> list[tuple[int, str, dict]]:
    """(ts ns, event_type, record) of every lttng_trace record as babeltrace2 prints it."""
    recs = []
    for ts, line in bt2_thesis_lines(trace):
        body = re.search(r"lttng_trace:\{(.*?)\}", line).group(1).replace("\\'", "'")
        pairs = dict(re.findall(r"'(\w+)':'?([^',]*)'?", body))
        recs.append((ts, pairs["event_type"], pairs))
    return recs


def bt2_duration(recs, event_type: str, **match) -> int:
    def ts(edge):
        hits = [t for t, et, r in recs if et == f"{event_type}.{edge}"
                and all(r.get(k) == v for k, v in match.items())]
        assert len(hits) == 1, (event_type, edge, match, hits)
        return hits[0]
    return ts("end") - ts("start")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    parts = [need_data(*NOVA), need_data(*CINDER), need_data(*DUMP), need_data(*SAMPLES)]
    st = Store(tmp_path_factory.mktemp("app") / "store", create=True)
    results = ingest(st, parts)
    rejected = [r for r in results if r.status == "rejected"]
    assert not rejected, rejected
    return st


@pytest.fixture(scope="module")
def tasks(store):
    return service_tasks(store.connect()).to_pylist()


def test_lenient_record_parser():
    rec = parse_thesis_record("lttng_trace:{'event_type':scheduler.select_destinations.start,"
                              "'vmname':'','host':'None','msg':'a, b} c'}")
    assert rec == {"event_type": "scheduler.select_destinations.start", "vmname": None,
                   "host": None, "msg": "a, b} c"}
    assert parse_thesis_record("ordinary log line") is None
    # truncated record: the pairs before the damage are kept
    assert parse_thesis_record("lttng_trace:{'event_type':'x.start','vm") == {"event_type": "x.start"}


def test_thesis_nova_tasks_equal_babeltrace2(tasks):
    recs = bt2_thesis_records(need_data(*NOVA))
    by = {(t["task"], t["vmname"]): t for t in tasks if t["source"] == "lttng_trace"}
    create = by[("compute.instance.create", "vm-26009")]
    assert create["duration_ns"] == bt2_duration(recs, "compute.instance.create", vmname="vm-26009")
    assert (create["state_before"], create["state_after"]) == ("building", "active")
    delete = by[("compute.instance.delete", "vm-18387")]
    assert delete["duration_ns"] == bt2_duration(recs, "compute.instance.delete", vmname="vm-18387")
    assert delete["state_after"] == "deleted"
    shutdown = by[("compute.instance.shutdown", "vm-18387")]
    assert shutdown["duration_ns"] == bt2_duration(recs, "compute.instance.shutdown", vmname="vm-18387")
    sched = by[("scheduler.select_destinations", None)]
    assert sched["duration_ns"] == bt2_duration(recs, "scheduler.select_destinations")
    assert sched["request_id"] == create["request_id"]  # the same boot request


def test_thesis_cinder_every_volume_task(tasks):
    recs = bt2_thesis_records(need_data(*CINDER))
    starts = [(t, et) for t, et, _ in recs if et.endswith(".start")]
    ends = [(t, et) for t, et, _ in recs if et.endswith(".end")]
    # independently: each start is closed by the next end of the same task (none interleave)
    expected = []
    for t0, et in starts:
        task = et[:-len(".start")]
        t1 = min(t for t, e in ends if e == task + ".end" and t >= t0)
        expected.append((task, t1 - t0))
    ours = [(t["task"], t["duration_ns"]) for t in tasks
            if t["source"] == "lttng_trace" and t["task"].startswith("volume.")]
    assert len(expected) == 6
    assert ours == expected


def _dump_notifications(path: Path) -> list[dict]:
    text = (path / "notifications.info.xml").read_text()
    out = []
    for ev in text.split("<event>")[1:]:
        def top(tag):
            m = re.search(rf"^<{tag}>\s*(.*?)\s*</{tag}>", ev, re.M | re.S)
            return m.group(1) if m else None
        payload = re.search(r"^<payload>(.*?)^</payload>", ev, re.M | re.S).group(1)
        state = re.search(r"^\t<state>\s*(\S*)\s*</state>", payload, re.M)
        inst = re.search(r"^\t<instance_id>\s*(\S*)\s*</instance_id>", payload, re.M)
        out.append({"ts": top("timestamp"), "event_type": top("event_type"),
                    "state": state.group(1) if state else None,
                    "instance": inst.group(1) if inst else None})
    return out


def test_dump_instance_state_sequence(store):
    from stacklens.models.vm_states import vm_state_timeline
    raw = sorted(_dump_notifications(need_data(*DUMP)), key=lambda r: r["ts"])
    inst = next(r["instance"] for r in raw if r["instance"])
    expected = [r["state"] for r in raw if r["instance"] == inst and r["state"]]
    timeline = [r for r in vm_state_timeline(store.connect(), collapse=False).to_pylist()
                if r["instance"] == inst and r["source"] == "rabbitmq.dump"]
    assert [r["vm_state"] for r in timeline] == expected
    assert expected[0] == "building" and expected[-1] == "active"


def test_all_nova_samples_parse(store):
    files = sorted(need_data(*SAMPLES).glob("*.json"))
    assert len(files) == 140
    rows = store.connect().execute(
        "SELECT count(*), count(DISTINCT name) FROM events WHERE source = 'oslo.notification'").fetchall()
    expected_types = {json.loads(f.read_text())["event_type"] for f in files}
    assert rows[0] == (140, len(expected_types))


@pytest.mark.parametrize("chunk", [64, 32 << 20])
def test_oslo_json_log_real_formatter(tmp_path, monkeypatch, chunk):
    """Records written by oslo.log's own JSONFormatter, read back (in blocks smaller than a
    line too); oracle: `created`."""
    pytest.importorskip("oslo_log")
    from stacklens.sources import oslo_json
    monkeypatch.setattr(oslo_json, "CHUNK_BYTES", chunk)
    log = tmp_path / "nova-compute.json.log"
    prog = ROOT / "tests" / "programs" / "oslo_json_writer.py"
    subprocess.run([sys.executable, str(prog), str(log)], check=True, timeout=60)
    with open(log, "a") as f:
        f.write("this line is damaged {\n")
    raw = [json.loads(line) for line in log.read_text().splitlines()[:-1]]
    st = Store(tmp_path / "store", create=True)
    res = ingest(st, [log])
    assert res[0].format == "oslo.log.json" and res[0].skipped == 1
    got = st.connect().execute(
        "SELECT ts, request_id, fields->>'$.level', fields->>'$.message', fields->>'$.traceback'"
        " FROM events ORDER BY pos").fetchall()
    assert len(got) == len(raw)
    for (ts, req, level, msg, tb), r in zip(got, raw):
        whole, frac = repr(r["created"]).split(".")
        assert ts == int(whole) * 10**9 + int(frac[:9].ljust(9, "0"))
        assert req == (r.get("context") or {}).get("request_id")
        assert (level, msg, tb) == (r["levelname"], r["message"], r["traceback"])


def test_notification_lines_bad_line_reported(tmp_path):
    """One JSON per line, bare and in the oslo.message envelope; a bad line is skipped."""
    sample = json.loads((need_data(*SAMPLES) / "instance-pause-start.json").read_text())
    from stacklens.sources.notifications import resolve_refs
    msg = resolve_refs(sample, need_data(*SAMPLES))
    msg["timestamp"] = "2024-01-02 03:04:05.123456"
    wrapped = {"oslo.version": "2.0", "oslo.message": json.dumps(dict(msg, _context_request_id="req-x"))}
    p = tmp_path / "notifications.jsonl"
    p.write_text(json.dumps(msg) + "\n" + "{not json\n" + json.dumps(wrapped) + "\n")
    st = Store(tmp_path / "store", create=True)
    res = ingest(st, [p])
    assert res[0].status == "ingested" and res[0].rows == 2 and res[0].skipped == 1
    assert "line 2" in res[0].message
    rows = st.connect().execute("SELECT ts, name, request_id, instance FROM events ORDER BY pos").fetchall()
    uuid = msg["payload"]["nova_object.data"]["uuid"]
    assert rows[0] == (1704164645123456000, "instance.pause.start",
                       msg["payload"]["nova_object.data"]["request_id"], uuid)
    assert rows[1][2] == "req-x" and rows[1][3] == uuid


def test_dump_request_rpc_hops(store):
    """conductor → scheduler → compute hops of a boot request; oracle: the dump's own XML."""
    from stacklens.models.request_flow import request_flow
    req = "req-ba9ff601-04cc-4889-810f-812f73e1f7dc"
    dump = need_data(*DUMP)
    expected = set()
    for f in dump.glob("*.xml"):
        for ev in f.read_text().split("<event>")[1:]:
            if req in ev and "<method>" in ev:
                method = re.search(r"^<method>\s*(\S+)\s*</method>", ev, re.M).group(1)
                if not method.startswith("object_"):
                    kind = "call" if re.search(r"^<_msg_id>", ev, re.M) else "cast"
                    expected.add((f.stem, method, kind))
    flow = request_flow(store.connect(), req)
    hops = [h for h in flow.hops if not h["method"].startswith("object_")]
    assert {(h["topic"], h["method"], h["kind"]) for h in hops} == expected
    order = [h["service"] for h in hops]
    assert order.index("conductor") < order.index("scheduler") < order.index("compute")
    # the scheduler's reply names the host whose compute topic received the build
    sched = next(h for h in hops if h["method"] == "select_destinations")
    reply_file = dump / (sched["reply_queue"] + ".xml")
    chosen = re.search(r"<host>\s*(\S+)\s*</host>", reply_file.read_text()).group(1)
    assert json.loads(sched["result"])["host"] == chosen
    build = next(h for h in hops if h["method"] == "build_and_run_instance")
    assert build["topic"] == f"compute.{chosen}" and build["caller"] == "scheduler"
    assert sched["replies"] == reply_file.read_text().count("<event>")


def test_samples_live_migration_timeline(store):
    from stacklens.models.live_migration import live_migration_steps
    files = sorted(need_data(*SAMPLES).glob("instance-live_migration_*-start.json"))
    expected = {f.name[len("instance-live_migration_"):-len("-start.json")] for f in files}
    steps = live_migration_steps(store.connect()).to_pylist()
    assert {s["step"] for s in steps} - {"migration", "select_destination"} == expected
    assert len({s["instance"] for s in steps}) == 1
    pre = next(s for s in steps if s["step"] == "pre")
    assert pre["where"] == "destination" and pre["event_family"] == "versioned"
    assert sum(1 for s in steps if s["step"] == "migration") == 1


def test_cli_json(store):
    from typer.testing import CliRunner
    from stacklens.cli import _register_commands, app
    if "request" not in {c.name or c.callback.__name__ for c in app.registered_commands}:
        _register_commands()
    run = CliRunner()
    r = run.invoke(app, ["tasks", "--store", str(store.root), "--json"])
    assert r.exit_code == 0, r.output
    names = {t["task"] for t in json.loads(r.output)["tasks"]}
    assert {"compute.instance.create", "volume.create", "scheduler.select_destinations"} <= names
    r = run.invoke(app, ["vm", "vm-18387", "--store", str(store.root), "--json"])
    assert r.exit_code == 0, r.output
    vm = json.loads(r.output)
    assert [s["vm_state"] for s in vm["states"]] == ["active", "deleted"]
    r = run.invoke(app, ["request", "req-ba9ff601-04cc-4889-810f-812f73e1f7dc", "--store", str(store.root), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["hops"]
    r = run.invoke(app, ["report", "--store", str(store.root), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["layers"] == ["app"]


@pytest.mark.parametrize("chunk", [4096, 32 << 20])
def test_notification_lines_every_sample_streamed(tmp_path, monkeypatch, chunk):
    """Every Nova sample as one line (bare, or in the oslo.message envelope; escapes, non-ASCII
    text), read in small blocks too; oracle: json.loads of each line and datetime's parse."""
    from datetime import datetime, timezone
    from stacklens.sources import notifications
    from stacklens.sources.notifications import NotificationReader, resolve_refs
    monkeypatch.setattr(notifications, "CHUNK_BYTES", chunk)
    samples = need_data(*SAMPLES)
    stamps = ["2024-01-02 03:04:05.123456", "2024-01-02T03:04:05Z", "2024-01-02 03:04:05",
              "2024-02-29T23:59:59.5+02:00"]
    lines, expected, bad = [], [], []
    for i, f in enumerate(sorted(samples.glob("*.json"))):
        msg = resolve_refs(json.loads(f.read_text()), samples)
        msg["timestamp"] = stamps[i % len(stamps)]
        msg["_context_request_id"] = f"req-{i}" if i % 3 == 0 else None
        msg["payload"]["note"] = 'quote " backslash \\ newline \n tab \t snowman \u2603 \U0001F600'
        text = json.dumps(msg, ensure_ascii=i % 2 == 0)
        if i % 2:
            text = json.dumps({"oslo.version": "2.0", "oslo.message": text})
        lines.append(text)
        expected.append((len(lines), msg))
        if i % 17 == 0:
            lines.append(text[: len(text) // 2])  # cut
            bad.append(len(lines))
        if i % 23 == 0:
            lines.append("")
        if i % 31 == 0:  # two objects spliced on one line, a raw control character in a string
            lines.append(text + text)
            bad.append(len(lines))
            lines.append(text[:2] + "\x01" + text[2:])  # inside the first key
            bad.append(len(lines))
    # invalid UTF-8 inside a string: the line is kept, the bytes replaced (as decode does)
    raw = json.dumps(dict(expected[0][1], publisher_id="nova-compute:HOST")).encode()
    raw = raw.replace(b"HOST", b"h\xffst")
    lines.append(raw.decode("latin-1"))
    expected.append((len(lines), json.loads(raw.decode("utf-8", "replace"))))
    path = tmp_path / "notifications.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8").replace("h\xffst".encode(), b"h\xffst"))
    reader = NotificationReader(path, ReadOptions())
    rows = [r for t in reader.tables() for r in t.to_pylist()]
    assert [r["pos"] for r in rows] == [p for p, _ in expected]
    assert reader.report.skipped == len(bad) and reader.report.bad_positions == bad[:10]
    assert "invalid UTF-8 replaced" in reader.report.notes
    for row, (_, msg) in zip(rows, expected):
        data = msg["payload"].get("nova_object.data") or {}
        t = datetime.fromisoformat(msg["timestamp"].replace("Z", "+00:00"))
        t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
        assert row["ts"] == int(t.timestamp()) * 10**9 + t.microsecond * 1000
        assert json.loads(row["fields"]) == msg
        assert row["name"] == msg["event_type"]
        assert row["procname"] == msg["publisher_id"].split(":")[0]
        assert row["request_id"] == (msg["_context_request_id"] or data.get("request_id")
                                     or msg["payload"].get("request_id"))
        uuid = data.get("uuid") if msg["event_type"].startswith("instance.") else None
        assert row["instance"] == (msg["payload"].get("instance_id") or msg["payload"].get("instance_uuid")
                                   or uuid or data.get("instance_uuid"))


def test_critical_path_of_thesis_requests(store, tasks):
    """The boot request's critical path is select_destinations → wait → create, and the delete
    request's is the delete alone (shutdown runs inside it); every figure from babeltrace2."""
    from stacklens.models.request_flow import request_flow
    recs = bt2_thesis_records(need_data(*NOVA))

    def edge(event_type, **match):
        hits = [t for t, et, r in recs if et == event_type and all(r.get(k) == v for k, v in match.items())]
        assert len(hits) == 1, (event_type, hits)
        return hits[0]

    by = {(t["task"], t["vmname"]): t for t in tasks if t["source"] == "lttng_trace"}
    boot = request_flow(store.connect(), by[("compute.instance.create", "vm-26009")]["request_id"])
    sel_start, sel_end = edge("scheduler.select_destinations.start"), edge("scheduler.select_destinations.end")
    cr_start = edge("compute.instance.create.start", vmname="vm-26009")
    cr_end = edge("compute.instance.create.end", vmname="vm-26009")
    assert [(s["kind"], s.get("task"), s["start_ts"], s["end_ts"]) for s in boot.critical_path] == [
        ("span", "scheduler.select_destinations", sel_start, sel_end),
        ("wait", None, sel_end, cr_start),
        ("span", "compute.instance.create", cr_start, cr_end)]
    assert sum(s["duration_ns"] for s in boot.critical_path) == cr_end - sel_start

    delete = request_flow(store.connect(), by[("compute.instance.delete", "vm-18387")]["request_id"])
    assert [(s["kind"], s.get("task"), s["duration_ns"]) for s in delete.critical_path] == [
        ("span", "compute.instance.delete", bt2_duration(recs, "compute.instance.delete", vmname="vm-18387"))]


def _timestamp_ns(text) -> int | None:
    """ns of an oslo timestamp ("YYYY-MM-DD[ T]HH:MM:SS[.f][Z|±HH[:]MM]", the forms the
    reader documents), checked by datetime; None if it is not one."""
    from datetime import datetime, timedelta, timezone
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                     r"(Z|[+-]\d{2}:?\d{2})?", text) if isinstance(text, str) else None
    if not m:
        return None
    y, mo, d, h, mi, s, frac, zone = m.groups()
    try:
        t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc)
    except ValueError:
        return None
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        hh, mm = int(zone[1:3]), int(zone[-2:])
        if hh > 23 or mm > 59:
            return None
        t -= sign * timedelta(hours=hh, minutes=mm)
    return int(t.timestamp()) * 10**9 + int((frac or "0").ljust(9, "0"))


def test_notification_lines_damaged_like_json_loads(tmp_path):
    """Real notification lines damaged at random (cut, bytes changed, inserted, deleted): each
    is kept exactly when Python's json.loads accepts it as an object with an event_type and a
    timestamp, and then with the same content and time; the others are counted as skipped.
    A damaged first line does not make the file unreadable."""
    import random
    from stacklens.sources.notifications import NotificationReader, resolve_refs
    samples = need_data(*SAMPLES)
    rnd = random.Random(4)
    base = []
    for f in sorted(samples.glob("*.json"))[:40]:
        msg = resolve_refs(json.loads(f.read_text()), samples)
        msg["timestamp"] = "2024-01-02 03:04:05.123456"
        base.append(json.dumps(msg, ensure_ascii=rnd.random() < 0.5))
    alphabet = '{}[]",:\\ntru0-.e \x01\u00e9'
    lines, expected = [], []
    for i in range(3000):
        text = rnd.choice(base)
        if i % 2:
            text = json.dumps({"oslo.version": "2.0", "oslo.message": text})
        for _ in range(rnd.choice([0, 1, 1, 2])):
            at = rnd.randrange(len(text))
            how = rnd.randrange(4)
            if how == 0:
                text = text[:at]
            elif how == 1:
                text = text[:at] + rnd.choice(alphabet) + text[at + 1:]
            elif how == 2:
                text = text[:at] + rnd.choice(alphabet) + text[at:]
            else:
                text = text[:at] + text[at + 1:]
        text = text.replace("\n", " ")
        lines.append(text)
        try:
            doc = json.loads(text)
            if isinstance(doc, dict) and isinstance(doc.get("oslo.message"), str):
                doc = json.loads(doc["oslo.message"])
            ok = isinstance(doc, dict) and isinstance(doc.get("event_type"), str)
            ts = None
            if ok:  # the notification's timestamp, else its object's updated_at, created_at
                data = doc.get("payload", {}).get("nova_object.data", {}) \
                    if isinstance(doc.get("payload"), dict) else {}
                data = data if isinstance(data, dict) else {}
                for text in (doc.get("timestamp"), data.get("updated_at"), data.get("created_at")):
                    ts = _timestamp_ns(text)
                    if ts is not None:
                        break
        except ValueError:
            ts = None
        if ts is not None:
            expected.append((i + 1, doc, ts))
    path = tmp_path / "damaged.jsonl"
    path.write_text("\n".join(lines) + "\n")
    reader = NotificationReader(path, ReadOptions())
    rows = [r for t in reader.tables() for r in t.to_pylist()]
    assert [r["pos"] for r in rows] == [p for p, _, _ in expected]
    assert [json.loads(r["fields"]) for r in rows] == [d for _, d, _ in expected]
    assert [r["ts"] for r in rows] == [t for _, _, t in expected]
    assert reader.report.skipped == len([ln for ln in lines if ln.strip()]) - len(expected)
    assert 500 < len(expected) < 2900  # both kinds are there in numbers
