"""Volume ↔ instance ↔ host and multi-attachment findings (issue 4), on Nova's real
instance.volume_attach/detach samples ($ref resolved) re-timed and re-addressed by this test:
the expected overlaps are the ones the test puts in."""

from __future__ import annotations

import json

from stacklens.sources.notifications import resolve_refs
from stacklens.store import Store
from stacklens.store.ingest import ingest
from tests.conftest import need_data

SAMPLES = ("openstack", "nova-notification-samples")
VOL_SHARED, VOL_SEQ = "11111111-aaaa-4bbb-8ccc-000000000001", "11111111-aaaa-4bbb-8ccc-000000000002"
VM_A, VM_B = "22222222-aaaa-4bbb-8ccc-00000000000a", "22222222-aaaa-4bbb-8ccc-00000000000b"


def _event(kind: str, second: int, volume: str, instance: str, host: str) -> str:
    base = need_data(*SAMPLES)
    msg = resolve_refs(json.loads((base / f"instance-volume_{kind}-end.json").read_text()), base)
    data = msg["payload"]["nova_object.data"]
    data.update(uuid=instance, volume_id=volume, host=host)
    msg["timestamp"] = f"2024-05-01 10:00:{second:02d}.000000"
    return json.dumps(msg)


def test_volume_attached_to_two_instances_flagged(tmp_path):
    from stacklens.models.cinder import multi_attached_volumes, volume_attachments
    lines = [  # shared volume: A attaches at 1, B at 5 while A still holds it, A detaches at 9
        _event("attach", 1, VOL_SHARED, VM_A, "cmp1"), _event("attach", 5, VOL_SHARED, VM_B, "cmp2"),
        _event("detach", 9, VOL_SHARED, VM_A, "cmp1"),
        # sequential volume: A attaches/detaches, then B attaches: no finding
        _event("attach", 2, VOL_SEQ, VM_A, "cmp1"), _event("detach", 3, VOL_SEQ, VM_A, "cmp1"),
        _event("attach", 4, VOL_SEQ, VM_B, "cmp2"),
    ]
    p = tmp_path / "notifications.jsonl"
    p.write_text("\n".join(lines) + "\n")
    st = Store(tmp_path / "store", create=True)
    assert ingest(st, [p])[0].rows == len(lines)
    con = st.connect()
    s = 1714557600 * 10**9  # 2024-05-01 10:00:00 UTC
    att = {(r["volume"], r["instance"]): r for r in volume_attachments(con).to_pylist()}
    assert att[(VOL_SHARED, VM_A)]["attached_ts"] == s + 1 * 10**9
    assert att[(VOL_SHARED, VM_A)]["detached_ts"] == s + 9 * 10**9
    assert att[(VOL_SHARED, VM_B)]["detached_ts"] is None and att[(VOL_SHARED, VM_B)]["host"] == "cmp2"
    assert att[(VOL_SEQ, VM_A)]["detached_ts"] == s + 3 * 10**9
    found = multi_attached_volumes(con).to_pylist()
    assert [(f["volume"], {f["instance"], f["other_instance"]}, f["since_ts"], f["until_ts"]) for f in found] == \
        [(VOL_SHARED, {VM_A, VM_B}, s + 5 * 10**9, s + 9 * 10**9)]
