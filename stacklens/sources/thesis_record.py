"""The thesis instrumentation records `lttng_trace:{…}` (SPEC §3), carried in the `msg`
field of LTTng Python agent events (`lttng_python:event`).

The text is Python-dict-like, not JSON: single quotes, values sometimes unquoted
(`'event_type':scheduler.select_destinations.start`), `'None'` for no value. The parser is
lenient: it reads `key: value` pairs left to right, a value being a quoted string (either
quote, backslash escapes) or everything up to the next `,` or `}`; what it cannot read ends
the record (the pairs read so far are kept).

These records are few (a handful per thousand log events), so they are parsed per record,
reading the events already in the store — never the CTF files again.
"""

from __future__ import annotations

import re

PREFIX = "lttng_trace:"
_KEY = re.compile(r"\s*(?:'([^']*)'|\"([^\"]*)\"|([A-Za-z_][\w.\-]*))\s*:\s*")
_BARE = re.compile(r"[^,}]*")


def parse_thesis_record(text: str | None) -> dict[str, str | None] | None:
    """`lttng_trace:{'event_type':x.start,'vmname':'vm-1',…}` → {'event_type': 'x.start', …};
    None when `text` is not such a record. 'None' and '' values become None."""
    if not text:
        return None
    at = text.find(PREFIX)
    if at < 0:
        return None
    s = text[at + len(PREFIX):].strip()
    if not s.startswith("{"):
        return None
    i, n, out = 1, len(s), {}
    while i < n:
        while i < n and s[i] in " ,\t\n":
            i += 1
        if i >= n or s[i] == "}":
            break
        m = _KEY.match(s, i)
        if not m:
            break
        key = m.group(1) if m.group(1) is not None else (m.group(2) if m.group(2) is not None else m.group(3))
        i = m.end()
        if i < n and s[i] in "'\"":
            quote, j, buf = s[i], i + 1, []
            while j < n and s[j] != quote:
                if s[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(s[j])
                j += 1
            value = "".join(buf)
            i = j + 1
        else:
            m2 = _BARE.match(s, i)
            value = m2.group(0).strip()
            i = m2.end()
        out[key] = None if value in ("", "None") else value
    return out or None
