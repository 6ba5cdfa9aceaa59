"""The application layer against a real Nova 34.0.0 run (issue 14).

One lab run per session (`stacklens lab run --scenario openstack`: nova-api, conductor,
scheduler, two nova-computes on the fake virt driver, placement, on a private RabbitMQ),
ingested with `stacklens ingest`; every answer is checked against the run's
ground_truth.json, which the lab's driver recorded from Nova itself (fake-driver calls and
their hosts, API answers, instance actions with their request ids, final hosts, faults) —
or against the raw notification lines parsed here with the json module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI, need_program

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _stacklens(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "stacklens.cli", *args, "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


# Two fresh runs: Nova on the real RabbitMQ, and on oslo.messaging's fake transport (in-process
# RPC, notifications through the log driver); STACKLENS_OSLAB_TRANSPORTS=rabbit keeps one.
TRANSPORTS = os.environ.get("STACKLENS_OSLAB_TRANSPORTS", "rabbit,fake").split(",")


@pytest.fixture(scope="module", params=TRANSPORTS)
def lab(request, tmp_path_factory):
    reuse = os.environ.get("STACKLENS_OSLAB_REUSE")  # "BUNDLE:STORE" of an earlier run (development)
    if reuse:
        out, store = (Path(p) for p in reuse.split(":"))
        info = json.loads((out / "lab.json").read_text())
        return {"out": out, "store": str(store), "truth": json.loads((out / "ground_truth.json").read_text()),
                "info": info, "transport": info["transport"]}
    need_program("rabbitmq-server") if Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() is False else None
    out = tmp_path_factory.mktemp("oslab") / "bundle"
    store = out.parent / "store"
    broker = ["--broker", "none"] if request.param == "fake" else []
    r = subprocess.run([sys.executable, "-m", "stacklens.cli", "lab", "run", "--scenario", "openstack",
                        "--out", str(out), *broker], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        msg = f"openstack lab failed: {r.stderr[-1500:]}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    r = subprocess.run([sys.executable, "-m", "stacklens.cli", "ingest", str(out), "--store", str(store), "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    parts = json.loads(r.stdout)["parts"]
    truth = json.loads((out / "ground_truth.json").read_text())
    info = json.loads((out / "lab.json").read_text())
    return {"out": out, "store": str(store), "truth": truth, "info": info, "transport": request.param,
            "parts": parts}


def _raw_notifications(out: Path) -> list[dict]:
    docs = []
    for f in sorted((out / "notifications").glob("*.jsonl")):  # listener segments or the log driver's file
        for line in f.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                docs.append(json.loads(d["oslo.message"]) if "oslo.message" in d else d)
    return docs


def _by_name(truth: dict, name: str) -> dict:
    return next(i for i in truth["instances"].values() if i["display_name"] == name)


def _action(inst: dict, action: str) -> dict:
    return next(a for a in inst["actions"] if a["action"] == action)


def _driver(truth: dict, method: str, uuid: str) -> list[dict]:
    return [c for c in truth["driver_calls"] if c["method"] == method and c["instance"] == uuid]


def test_lab_ran_on_the_transport_asked(lab):
    # the run says which transport it used, and Nova's own driver agrees
    assert lab["info"]["transport"] == lab["truth"]["transport"] == lab["transport"]
    assert lab["truth"]["errors"] == []
    # the listener captured both formats from the bus
    families = {"versioned" if "nova_object.data" in json.dumps(d.get("payload", {})) else "legacy"
                for d in _raw_notifications(lab["out"])}
    assert families == {"legacy", "versioned"}
    # every log and notification part is read (placement's JSON log opens with a 20 KB line);
    # the JSON logs lose nothing (a text log may skip the bare lines of a multi-line message)
    for p in lab.get("parts", []):
        name = Path(p["path"]).name
        if name not in ("ground_truth.json", "lab.json"):
            assert p["status"] == "ingested", p
            if name.endswith(".json.log") or "notifications" in p["path"]:
                assert p["skipped"] == 0, p


def test_hosts_come_from_the_data(lab):
    truth = lab["truth"]
    vm_a = _by_name(truth, "lab-vm-a")
    v = _stacklens("vm", vm_a["uuid"], "--store", lab["store"])
    # every state record of the VM names a real host, never the listener's or "unknown"
    steps = {m["step"]: m for m in v["live_migration"]}
    pre = _driver(truth, "pre_live_migration", vm_a["uuid"])[0]["host"]
    src = _driver(truth, "live_migration", vm_a["uuid"])[0]["host"]
    post_dest = _driver(truth, "post_live_migration_at_destination", vm_a["uuid"])[0]["host"]
    assert steps["pre"]["host"] == pre
    assert steps["post"]["host"] == src
    assert steps["post_dest"]["host"] == post_dest
    # the final host after the completed migration is the destination (Nova's own answer)
    assert v["final_host"] == vm_a["host"] == post_dest
    for t in v["tasks"]:
        assert t["host"] in truth["computes"] + [truth["controller"]], t


def test_one_event_counts_once(lab):
    raw = _raw_notifications(lab["out"])
    # oracle: the legacy notifications alone (one per call), parsed here
    legacy_sched = [d for d in raw if d["event_type"] == "scheduler.select_destinations.start"
                    and "nova_object.data" not in json.dumps(d["payload"])]
    ended = [d["_context_request_id"] for d in raw if d["event_type"] == "scheduler.select_destinations.end"
             and "nova_object.data" not in json.dumps(d["payload"])]
    tasks = {t["task"]: t for t in _stacklens("tasks", "--store", lab["store"])["tasks"]}
    sd = tasks["scheduler.select_destinations"]
    assert sd["count"] == len(legacy_sched)
    starts = [d["_context_request_id"] for d in legacy_sched]
    unended = sum(starts.count(r) - ended.count(r) for r in set(starts))
    assert unended >= 1  # the filtered boot and the failed migration's second round
    assert sd["errors"] == unended and sd["closed"] == sd["count"]
    # one instance.create per boot that reached a compute (the fake driver's spawns at boot)
    boots = [s for s in lab["truth"]["scenarios"] if s["name"] == "boot"]
    assert tasks["instance.create"]["count"] == len(boots)
    assert "compute.instance.create" not in tasks


def test_novalidhost_says_its_cause(lab):
    truth = lab["truth"]
    decisions = _stacklens("scheduling", "--store", lab["store"])["decisions"]
    filtered = _by_name(truth, "lab-vm-qemu-only")
    sc = next(s for s in truth["scenarios"] if s["name"] == "boot_filtered")
    d = [d for d in decisions if d["instance"] == filtered["uuid"] and d["outcome"] == "no_valid_host"]
    assert d, decisions
    assert d[0]["eliminated_by"] == sc["filter"]
    assert d[0]["filters"], "an empty filter chain"
    assert sc["filter"] in d[0]["explanation"] and "a filter removed" not in d[0]["explanation"]
    toobig = _by_name(truth, "lab-vm-toobig")
    sc = next(s for s in truth["scenarios"] if s["name"] == "boot_no_allocation_candidates")
    d = [d for d in decisions if d["outcome"] == "no_valid_host" and d["request_id"] == _action(toobig, "create")["request_id"]]
    assert d, decisions
    assert "allocation candidates" in d[0]["explanation"]
    assert str(sc["memory_mb"]) in d[0]["explanation"]
    # one decision per select_destinations round the scheduler logged (its JSON log, read here):
    # the text copy of the same records does not double them
    rounds = [json.loads(line) for line in (lab["out"] / truth["controller"] / "nova-scheduler.json.log")
              .read_text().splitlines() if "Starting to schedule for instances" in line]
    assert len(decisions) == len(rounds)
    for d in decisions:
        assert not (d["selected"] or "").endswith(";")
        if d["outcome"] == "selected":
            assert d["selected"] in truth["computes"]


def test_failed_live_migration_has_reason_and_host(lab):
    truth = lab["truth"]
    vm_b = _by_name(truth, "lab-vm-b")
    refused = [c for c in _driver(truth, "check_can_live_migrate_destination", vm_b["uuid"]) if c["error"]]
    assert refused
    sc = next(s for s in truth["scenarios"] if s["name"] == "live_migration_precheck_failure")
    v = _stacklens("vm", "lab-vm-b", "--store", lab["store"])
    failed = [m for m in v["live_migration"] if m["outcome"] == "error"]
    assert failed, v["live_migration"]
    assert any(refused[0]["error"]["class"] in (m.get("fault") or "") for m in failed)
    assert any(m["stayed_on"] == sc["source"] for m in failed)


def test_explain_shows_the_failed_live_migration(lab):
    """`explain --vm` shows the refused live migration with the exception the fake driver raised
    (ground truth) and the host the VM stayed on, and the completed one ending on its destination."""
    truth = lab["truth"]

    def migrations_of(vm: dict) -> list[dict]:
        ex = _stacklens("explain", "--vm", vm["uuid"], "--store", lab["store"])
        root = ex.get("tree", ex)
        group = [c for c in root["children"] if c["label"] == "live migrations (Nova)"]
        return [c["attrs"] for g in group for c in g["children"]]
    vm_b = _by_name(truth, "lab-vm-b")
    refused = [c for c in _driver(truth, "check_can_live_migrate_destination", vm_b["uuid"]) if c["error"]]
    sc = next(s for s in truth["scenarios"] if s["name"] == "live_migration_precheck_failure")
    failed = [m for m in migrations_of(vm_b) if m["outcome"] != "completed"]
    assert failed and refused
    assert all(refused[0]["error"]["class"] in (m["reason"] or "") for m in failed)
    assert all(m["host_after"] == sc["source"] for m in failed)
    done = next(s for s in truth["scenarios"] if s["name"] == "live_migration")
    vm = _by_name(truth, done["vm"])
    assert vm["uuid"] == done["instance"]
    completed = [m for m in migrations_of(vm) if m["outcome"] == "completed"]
    assert [m["host_after"] for m in completed] == [done["destination"]]


def test_vm_accepts_every_name(lab):
    truth = lab["truth"]
    vm_a = _by_name(truth, "lab-vm-a")
    by_uuid = _stacklens("vm", vm_a["uuid"], "--store", lab["store"])
    by_display = _stacklens("vm", "lab-vm-a", "--store", lab["store"])
    assert by_uuid["instance"] == by_display["instance"] == vm_a["uuid"]
    # libvirt-style names repeat across cells (cell0 numbers the failed boots on its own):
    # the instances the data names so (payload instance_name, parsed here) must all be offered
    same = {json.loads(json.dumps(d["payload"]))["nova_object.data"].get("uuid")
            for d in _raw_notifications(lab["out"]) if "nova_object.data" in d.get("payload", {})
            and d["payload"]["nova_object.data"].get("instance_name") == vm_a["name"]}
    r = subprocess.run([sys.executable, "-m", "stacklens.cli", "vm", vm_a["name"], "--store", lab["store"], "--json"],
                       capture_output=True, text=True)
    if len(same) == 1:
        assert json.loads(r.stdout)["instance"] == vm_a["uuid"] and same == {vm_a["uuid"]}
    else:
        assert r.returncode != 0 and "ambiguous" in r.stderr and vm_a["uuid"] in r.stderr


def test_request_flow_spans_the_services(lab):
    truth = lab["truth"]
    vm_a = _by_name(truth, "lab-vm-a")
    req = _action(vm_a, "create")["request_id"]
    flow = _stacklens("request", req, "--store", lab["store"])
    services = {s["service"] for s in flow["spans"]}
    assert {"nova-scheduler", "nova-compute"} <= services, services
    hosts = {s["host"] for s in flow["spans"]}
    assert _driver(truth, "spawn", vm_a["uuid"])[0]["host"] in hosts
    # the API's answer to the boot came back before the request's last event
    api = next(a for a in truth["api"] if a["request_id"] == req)
    assert flow["start_ts"] <= api["end_ns"] and flow["end_ts"] >= api["start_ns"]


def test_errors_carry_their_exception_into_findings(lab):
    truth = lab["truth"]
    findings = _stacklens("diagnose", "--store", lab["store"])["findings"]
    # one failed boot → one finding, whose evidence holds the request's error records
    for name in ("lab-vm-toobig", "lab-vm-qemu-only"):
        req = _action(_by_name(truth, name), "create")["request_id"]
        mine = [f for f in findings if f["rule"] != "unmatched_records"
                and (f.get("subject") or {}).get("request_id") == req]
        assert len(mine) == 1, [f["statement"] for f in mine]
        assert any("NoValidHost" in e["label"] for e in mine[0]["evidence"])
    # the failed live migration: the destination's exception class and message, from Nova
    vm_b = _by_name(truth, "lab-vm-b")
    refused = next(c for c in _driver(truth, "check_can_live_migrate_destination", vm_b["uuid"]) if c["error"])
    req = _action(vm_b, "live-migration")["request_id"]
    mine = [f for f in findings if (f.get("subject") or {}).get("request_id") == req]
    assert len(mine) == 1
    text = mine[0]["statement"] + " ".join(e["label"] for e in mine[0]["evidence"])
    assert refused["error"]["class"] in text and refused["error"]["message"].split(": ", 1)[-1] in text
    # a successful boot is not "failed" because a library logged an error during it
    ok = _action(_by_name(truth, "lab-vm-a"), "create")["request_id"]
    assert not [f for f in findings if (f.get("subject") or {}).get("request_id") == ok]


def test_request_and_explain_agree(lab):
    truth = lab["truth"]
    vm_a = _by_name(truth, "lab-vm-a")
    req = _action(vm_a, "create")["request_id"]
    flow = _stacklens("request", req, "--store", lab["store"])
    order = [p["service"] for p in flow["path"]]
    for a, b in [("nova-api", "nova-conductor"), ("nova-conductor", "nova-scheduler"),
                 ("nova-scheduler", "nova-compute")]:
        assert a in order and b in order and order.index(a) < order.index(b), order
    assert {p["host"] for p in flow["path"] if p["service"] == "nova-compute"} == \
        {_driver(truth, "spawn", vm_a["uuid"])[0]["host"]}
    ex = _stacklens("explain", "--request", req, "--store", lab["store"])
    root = ex.get("tree", ex)
    assert root["start"] == flow["start_ts"] and root["end"] == flow["end_ts"]
    # the tree holds the request's errors too (the failed migration's lone error notifications)
    req_b = _action(_by_name(truth, "lab-vm-b"), "live-migration")["request_id"]
    flow_b = _stacklens("request", req_b, "--store", lab["store"])
    assert any(r["name"] == "compute_task.migrate_server.error" for r in flow_b["records"])
    # text and JSON copies of one log record count once
    keys = [(r["ts"] // 1_000_000, r["name"], r["message"]) for r in flow["records"] if r["source"].startswith("oslo.log")]
    assert len(keys) == len(set(keys))


def test_unmatched_records_are_reported(lab):
    raw = _raw_notifications(lab["out"])
    # oracle: error notifications Nova emits with no start (versioned compute_task.*.error)
    lone = [d for d in raw if d["event_type"].startswith("compute_task.") and d["event_type"].endswith(".error")]
    assert lone
    un = _stacklens("tasks", "--store", lab["store"])["unmatched"]
    got = sum(u["count"] for u in un if u["kind"] == "end without start" and u["task"].startswith("compute_task."))
    assert got == len(lone)
    findings = _stacklens("diagnose", "--store", lab["store"])["findings"]
    assert any(f["rule"] == "unmatched_records" for f in findings)


def test_explain_vm_takes_the_names_vm_takes(lab):
    truth = lab["truth"]
    vm_b = _by_name(truth, "lab-vm-b")
    for key in (vm_b["uuid"], vm_b["display_name"]):
        ex = _stacklens("explain", "--vm", key, "--store", lab["store"])
        root = ex.get("tree", ex)
        assert root["attrs"]["instance"] == vm_b["uuid"]


def test_zero_length_spans_never_hang(lab):
    from stacklens.models.request_flow import critical_path
    truth = lab["truth"]
    req = _action(_by_name(truth, "lab-vm-a"), "create")["request_id"]
    spans = _stacklens("request", req, "--store", lab["store"])["spans"]
    assert spans
    zero = [dict(s, end_ts=s["start_ts"]) for s in spans] + [dict(spans[0], end_ts=spans[0]["start_ts"])]
    path = critical_path(zero)  # returned at all: it used to walk the same span forever
    assert all(seg["duration_ns"] >= 0 for seg in path)
    assert len([s for s in path if s["kind"] == "span"]) <= len(zero)


def test_samples_without_time_stay_out_of_ranges(lab, tmp_path):
    from tests.conftest import need_data
    samples = need_data("openstack", "nova-notification-samples")
    store = str(tmp_path / "st")
    for part in (lab["out"] / "notifications", samples):
        r = subprocess.run([sys.executable, "-m", "stacklens.cli", "ingest", str(part), "--store", store, "--json"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-1000:]
    # oracle: the sample documents with no timestamp, read here
    untimed = sum(1 for f in samples.glob("*.json") if "timestamp" not in json.loads(f.read_text()))
    info = _stacklens("info", "--store", store)
    assert info["events_without_time"] == untimed > 0
    assert info["time_range"]["begin"] >= lab["truth"]["started_ns"] - 10**9
    assert info["time_range"]["end"] <= lab["truth"]["ended_ns"] + 10**9


def test_migrations_shows_novas_view_without_qemu(lab):
    truth = lab["truth"]
    mig = _stacklens("migrations", "--store", lab["store"])
    assert mig["migrations"] == [] and mig["missing_layers"]  # no QEMU in this lab: said
    by_vm = {m["instance"]: m for m in mig["nova_migrations"]}
    vm_a, vm_b = _by_name(truth, "lab-vm-a"), _by_name(truth, "lab-vm-b")
    a = by_vm[vm_a["uuid"]]
    assert a["outcome"] == "completed"
    assert a["source"] == _driver(truth, "live_migration", vm_a["uuid"])[0]["host"]
    assert a["destination"] == _driver(truth, "pre_live_migration", vm_a["uuid"])[0]["host"]
    assert a["host_after"] == vm_a["host"]
    b = by_vm[vm_b["uuid"]]
    refused = next(c for c in _driver(truth, "check_can_live_migrate_destination", vm_b["uuid"]) if c["error"])
    sc = next(s for s in truth["scenarios"] if s["name"] == "live_migration_precheck_failure")
    assert b["outcome"] == "failed" and refused["error"]["class"] in b["reason"]
    assert b["destination"] == refused["host"] and b["host_after"] == sc["source"]


def test_json_log_names_its_host_without_bundle_toml(lab, tmp_path):
    truth = lab["truth"]
    src = lab["out"] / truth["computes"][1] / "nova-compute.json.log"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / src.name).write_bytes(src.read_bytes())  # no bundle.toml, no --host
    first = json.loads(src.read_text().splitlines()[0])["hostname"]  # oracle: the record itself
    r = subprocess.run([sys.executable, "-m", "stacklens.cli", "ingest", str(tmp_path / "in"), "--store",
                        str(tmp_path / "st"), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-800:]
    hosts = {h["host"] for h in _stacklens("info", "--store", str(tmp_path / "st"))["hosts"]}
    assert hosts == {first} == {truth["computes"][1]}
