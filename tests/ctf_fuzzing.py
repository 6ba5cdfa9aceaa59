"""Mutation fuzzing of the CTF reader, in worker subprocesses (used by tests/test_ctf_fuzz.py
and bench/ctf_fuzz.py).

A mutation is a pure function of (seed, index): which real trace, which file, which change
(bit flips, boundary-value overwrites of 1-8 bytes, truncation, TSDL token / CTF 2 JSON value
mutations). A worker process reads mutations start.. one after the other, each through the
reader as `ingest` uses it (`CtfReader.tables()` + `lost()`, and for some `dump`), and writes
a line per mutation to its journal: `B i` before, `R i outcome detail` after. The parent
watches the journal: a worker that dies by a signal (or exits) after `B i` crashed on
mutation i; one whose journal does not move for `timeout` seconds hangs on it (killed). In
both cases the parent keeps the mutated input and restarts a worker at i + 1.

Outcomes: ok (read, possibly with skipped data reported), rejected (a one-line SourceError),
internal (any other exception, or a rejection message of several lines: failures), crash
and hang (failures).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the code under test (another checkout to compare, e.g. the commit before a fix)
CODE = Path(os.environ.get("STACKLENS_FUZZ_CODE", ROOT)).resolve()
DATA = Path(os.environ.get("STACKLENS_DATA", ROOT.parent / "shared" / "data")).resolve()


@dataclass(frozen=True)
class Seed:
    """A real trace, reduced to what a mutation run needs: its metadata and some stream
    files (each cut to `max_bytes` at most, at a packet boundary for LTTng's fixed-size
    packets). `metadata` False: mutate only the streams (a 300 KB kernel TSDL takes a second
    to parse)."""

    name: str
    rel: str
    streams: tuple[str, ...] = ()  # () = all
    max_bytes: int | None = None
    metadata: bool = True


SEEDS = (
    Seed("sequence", "ctf-conformance/traces/succeed/sequence"),
    Seed("debug-info", "ctf-conformance/traces/succeed/debug-info"),
    Seed("struct-array-align-elem", "ctf-conformance/traces/succeed/struct-array-align-elem"),
    Seed("variant-keywords", "ctf-conformance/traces/succeed/meta-variant-reserved-keywords"),
    Seed("barectf", "ctf-conformance/traces/succeed/barectf-event-before-packet"),
    Seed("hello-lost", "tracecompass/hello-lost", ("channel1_0", "channel1_2"), 65536),
    # a stream cut after its first packet (256 KiB, ~4,700 kernel events)
    Seed("many-threads", "tracecompass/many-threads", ("channel0_5",), 262144, metadata=False),
    Seed("flipping-endianness", "tracecompass/flipping-endianness", (), 262144),
    Seed("ctf2-index", "tracecompass/CTF2-7.0-trace-with-index"),
    Seed("ctf2-small", "tracecompass/CTF2-7.0-smalltrace"),
)

OUTCOMES = ("ok", "rejected", "internal", "crash", "hang")
FAILURES = ("internal", "crash", "hang")

# boundary values for overwrites and metadata numbers
BOUNDARY = (0, 1, 2, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256, 4095, 4096, 65535, 65536,
            2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1)
META_NUMBERS = ("0", "1", "-1", "3", "7", "9", "64", "65", "128", "4096", "2147483648", "4294967295",
                "1099511627776", "2305843009213693952", "9223372036854775806",
                "4294967296", "4611686018427387904", "9223372036854775807", "9223372036854775808",
                "18446744073709551615", "18446744073709551616", "0x7fffffffffffffff", "99999999999999999999999")
KEY_CONTEXT = re.compile(r"(align\s*\(\s*|align\s*=\s*|size\s*=\s*|_dig\s*=\s*|\[\s*|id\s*=\s*|"
                         r"freq\s*=\s*|offset(_s)?\s*=\s*|=\s*|\.\.\.\s*)$")
LAYOUT_ATTR = re.compile(r"(?:align\s*\(\s*|align\s*=\s*|size\s*=\s*|\[\s*)(0[xX][0-9a-fA-F]+|\d+)")
KEY_MEMBERS = ("alignment", "minimum-alignment", "length", "id", "frequency", "data-stream-class-id",
               "seconds", "cycles")
TSDL_TOKEN = re.compile(r"0[xX][0-9a-fA-F]+|\d+|[A-Za-z_][A-Za-z0-9_]*|\"(?:\\.|[^\"\\])*\"|\S")
TSDL_INSERTS = ("{", "}", ";", "[", "]", "<", ">", ":=", "struct {", "align(", "variant", "0", "...",
                "integer { size = 64; }", "string", "[99999999999]", "enum : uint8_t { a }")


# --- seeds on disk --------------------------------------------------------------------------
def prepare_seeds(dest: Path, seeds: tuple[Seed, ...] = SEEDS) -> list[tuple[Seed, Path]]:
    """Copies of the seed traces under dest (streams cut as the seed says); missing data is
    left out."""
    out = []
    for s in seeds:
        src = DATA / s.rel
        if not (src / "metadata").is_file():
            continue
        d = dest / s.name
        if not (d / "metadata").is_file():
            tmp = dest / f".{s.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            shutil.copyfile(src / "metadata", tmp / "metadata")
            names = s.streams or tuple(sorted(p.name for p in src.iterdir()
                                              if p.is_file() and p.name != "metadata" and not p.name.startswith(".")))
            for n in names:
                data = (src / n).read_bytes()
                if s.max_bytes and len(data) > s.max_bytes:
                    # at the last packet start within max_bytes (the first packet whole)
                    starts = [p for p in _packet_starts(data[:s.max_bytes + 4]) if p > 0]
                    data = data[:starts[-1] if starts else s.max_bytes]
                (tmp / n).write_bytes(data)
            tmp.rename(d)
        out.append((s, d))
    return out


# --- mutations ------------------------------------------------------------------------------
@dataclass
class Mutation:
    seed: str
    file: str
    kind: str
    edits: list = field(default_factory=list)  # what was changed, for the record

    def describe(self) -> str:
        return f"{self.seed}/{self.file} {self.kind} {json.dumps(self.edits)[:200]}"


def _packet_starts(data: bytes) -> list[int]:
    """Offsets of the CTF packet magics (either byte order) in a stream file: packet starts,
    to aim some mutations at packet headers and contexts."""
    starts = [m.start() for m in re.finditer(b"\xc1\x1f\xfc\xc1|\xc1\xfc\x1f\xc1", data)]
    return starts or [0]


def _mutate_stream(rng: random.Random, data: bytearray, m: Mutation) -> bytearray:
    starts = _packet_starts(bytes(data))
    kind = rng.choice(("bitflip", "bitflip", "overwrite", "overwrite", "header", "header", "truncate", "mix"))
    m.kind = kind
    if kind == "truncate":
        cut = rng.choice((rng.randrange(len(data) + 1), rng.choice(starts) + rng.randrange(-2, 64)))
        cut = max(0, min(len(data), cut))
        m.edits.append(["cut", cut])
        return data[:cut]
    for _ in range(rng.randint(1, 4) if kind != "mix" else rng.randint(3, 12)):
        # positions near a packet start (its header and context, the first events) or anywhere
        if kind == "header" or rng.random() < 0.4:
            pos = rng.choice(starts) + min(rng.randrange(128), rng.randrange(512))
        else:
            pos = rng.randrange(len(data))
        if pos >= len(data):
            continue
        how = rng.random() if kind == "mix" else (0.0 if kind == "bitflip" else 1.0)
        if how < 0.5:
            bit = rng.randrange(8)
            data[pos] ^= 1 << bit
            m.edits.append(["flip", pos, bit])
        else:
            width = rng.choice((1, 1, 2, 4, 4, 8, 8))
            v = rng.choice(BOUNDARY)
            if rng.random() < 0.3:
                v = rng.getrandbits(8 * width)
            raw = (v % (1 << (8 * width))).to_bytes(width, rng.choice(("little", "big")))
            pos -= pos % width if rng.random() < 0.7 else 0
            data[pos:pos + width] = raw[:len(data) - pos]
            m.edits.append(["put", pos, raw.hex()])
    return data


def _mutate_tsdl(rng: random.Random, text: str, m: Mutation) -> str:
    if rng.random() < 0.3:
        # the value of a layout attribute: what the decoder turns into bit arithmetic
        spots = [(x.start(1), x.end(1)) for x in LAYOUT_ATTR.finditer(text)]
        aligns = [(a, b) for a, b in spots if "align" in text[max(0, a - 9):a]]
        if aligns and rng.random() < 0.5:
            spots = aligns  # alignments: the kernel's rounding arithmetic
        if spots:
            a, b = rng.choice(spots)
            new = rng.choice(META_NUMBERS)
            m.edits.append(["layout", a, text[a:b], new])
            return text[:a] + new + text[b:]
    toks = [(t.start(), t.end()) for t in TSDL_TOKEN.finditer(text)]
    if not toks:
        return text
    nums = [t for t in toks if text[t[0]].isdigit()]
    # numbers the decoder turns into sizes, alignments, lengths and ids
    key_nums = [t for t in nums if KEY_CONTEXT.search(text[max(0, t[0] - 16):t[0]])]
    idents = [text[a:b] for a, b in toks if text[a].isalpha() or text[a] == "_"]
    edits = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(("number", "number", "number", "ident", "delete", "insert", "duplicate", "swap"))
        if kind == "number" and key_nums and rng.random() < 0.6:
            a, b = rng.choice(key_nums)
        else:
            a, b = rng.choice(nums) if kind == "number" and nums else rng.choice(toks)
        if kind == "number":
            new = rng.choice(META_NUMBERS)
        elif kind == "ident":
            new = rng.choice(idents) if idents else "x"
        elif kind == "delete":
            new = ""
        elif kind == "insert":
            new = text[a:b] + " " + rng.choice(TSDL_INSERTS)
        elif kind == "duplicate":
            new = text[a:b] + " " + text[a:b]
        else:
            c, d = rng.choice(toks)
            new = text[c:d]
        edits.append((a, b, new, kind))
    # apply from the end so that earlier offsets stay valid (overlaps: the later one wins)
    for a, b, new, kind in sorted(edits, key=lambda e: -e[0]):
        m.edits.append([kind, a, text[a:b][:40], new[:40]])
        text = text[:a] + new + text[b:]
    return text


def _json_paths(obj: object, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _json_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _json_paths(v, path + (i,))
    return out


def _mutate_ctf2(rng: random.Random, raw: bytes, m: Mutation) -> bytes:
    frags = [json.loads(x) for x in raw.split(b"\x1e") if x.strip()]
    for _ in range(rng.randint(1, 3)):
        fi = rng.randrange(len(frags))
        paths = _json_paths(frags[fi])[1:]
        if not paths:
            continue
        p = rng.choice(paths)
        parent = frags[fi]
        for k in p[:-1]:
            parent = parent[k]
        key = p[-1]
        old = parent[key]
        kind = rng.choice(("number", "number", "number", "delete", "type", "deep", "value"))
        if isinstance(old, (int, float)) and not isinstance(old, bool) and kind in ("number", "value"):
            new: object = int(rng.choice(META_NUMBERS), 0) * rng.choice((1, 1, -1))
        elif kind == "number":
            # a number-valued member: alignment, length, id, mapping bounds …
            nums = [q for q in _json_paths(frags[fi]) if q and _is_number(_get(frags[fi], q))]
            keyed = [q for q in nums if q[-1] in KEY_MEMBERS]
            if keyed and rng.random() < 0.6:
                nums = keyed
            if nums:
                p = rng.choice(nums)
                parent = _get(frags[fi], p[:-1])
                key = p[-1]
                old = parent[key]
            new = int(rng.choice(META_NUMBERS), 0)
        elif kind == "delete":
            new = None
        elif kind == "type":
            new = rng.choice(("structure", "static-length-array", "dynamic-length-array", "variant",
                              "optional", "null-terminated-string", "fixed-length-unsigned-integer",
                              "fixed-length-floating-point-number", "static-length-blob", 7, [], {}))
        elif kind == "deep":
            new = {"type": "structure", "member-classes": [{"name": "n", "field-class": old}]}
        else:
            new = rng.choice(("", "x", -1, 2**64, [1, 2], {"a": 1}, None, True))
        m.edits.append([kind, [fi, *p], str(old)[:40], str(new)[:40]])
        if new is None and isinstance(parent, dict):
            del parent[key]
        elif new is None:
            parent[key] = None
        else:
            parent[key] = new
    return b"".join(b"\x1e" + json.dumps(f, indent=1).encode() + b"\n" for f in frags)


def _is_number(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _get(obj: object, path: tuple) -> object:
    for k in path:
        obj = obj[k]  # type: ignore[index]
    return obj


def make_mutation(seed: int, index: int, seeds: list[tuple[Seed, Path]], dest: Path) -> Mutation:
    """Write mutation (seed, index) as a trace directory `dest` (unchanged files are
    symbolic links to the seed's) and describe it."""
    rng = random.Random(f"{seed}:{index}")
    s, sdir = seeds[rng.randrange(len(seeds))]
    files = sorted(p.name for p in sdir.iterdir() if p.is_file())
    streams = [f for f in files if f != "metadata"]
    meta_p = 0.35 if s.metadata else 0.0
    target = "metadata" if rng.random() < meta_p or not streams else rng.choice(streams)
    m = Mutation(s.name, target, "")
    raw = (sdir / target).read_bytes()
    if target == "metadata":
        if rng.random() < 0.25:
            new = bytes(_mutate_stream(rng, bytearray(raw), m))
            m.kind = "meta-bytes-" + m.kind
        elif raw[:1] == b"\x1e":
            m.kind = "ctf2-json"
            new = _mutate_ctf2(rng, raw, m)
        else:
            m.kind = "tsdl-tokens"
            new = _mutate_tsdl(rng, raw.decode("utf-8", "replace"), m).encode()
    else:
        new = bytes(_mutate_stream(rng, bytearray(raw), m))
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in files:
        if f == target:
            (dest / f).write_bytes(new)
        else:
            os.symlink(sdir / f, dest / f)
    return m


# --- the worker -----------------------------------------------------------------------------
def exercise(path: Path, with_dump: bool) -> tuple[str, str]:
    """Read a trace as ingest does (and as `dump` does): (outcome, detail)."""
    import io

    from stacklens.errors import SourceError
    from stacklens.sources.ctf import CtfReader
    from stacklens.sources.ctf.dump import dump

    try:
        r = CtfReader(path)
        rows = sum(t.num_rows for t in r.tables())
        lost = r.lost()
        detail = f"rows={rows} skipped={r.report.skipped} notes={len(r.report.notes)} lost={lost.num_rows if lost is not None else 0}"
        if with_dump:
            out, err = io.StringIO(), io.StringIO()
            dump(path, out, err)
            if "Traceback" in err.getvalue():
                return "internal", "dump printed a traceback"
        return "ok", detail
    except SourceError as e:
        msg = str(e)
        if "\n" in msg:
            return "internal", f"rejection message of several lines: {msg[:300]!r}"
        return "rejected", msg
    except Exception as e:  # noqa: BLE001 — exactly what the fuzz looks for
        return "internal", f"{type(e).__name__}: {str(e)[:300]}"


def worker(seed: int, start: int, end: int, workdir: Path, journal: Path, dump_every: int) -> None:
    """Run mutations start..end-1, one journal line before and after each."""
    seeds = prepare_seeds(workdir / "seeds")
    cur = workdir / "cur"
    with open(journal, "a", buffering=1) as j:
        for i in range(start, end):
            m = make_mutation(seed, i, seeds, cur)
            j.write(f"B\t{i}\t{m.describe()}\n")
            j.flush()
            # dump formats every event in Python: only for the small seeds
            small = sum(p.stat().st_size for p in cur.iterdir()) < 200_000
            outcome, detail = exercise(cur, small and dump_every > 0 and i % dump_every == 0)
            j.write(f"R\t{i}\t{outcome}\t{detail.replace(chr(10), ' ').replace(chr(9), ' ')}\n")


# --- the parent -----------------------------------------------------------------------------
@dataclass
class Result:
    index: int
    outcome: str
    detail: str
    mutation: str = ""


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    restarts: int = 0

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    def failures(self) -> list[Result]:
        return [r for r in self.results if r.outcome in FAILURES]

    def summary(self) -> str:
        return (f"{len(self.results)} tries in {self.seconds:.0f} s: "
                + ", ".join(f"{o} {self.count(o)}" for o in OUTCOMES))


def run(seed: int, start: int, end: int, workdir: Path, timeout: float = 20.0, dump_every: int = 8,
        keep_failures: Path | None = None, on_result=None, memory_limit_mb: int = 4096) -> Run:  # noqa: ANN001
    """Mutations start..end-1 in worker subprocesses (restarted after a crash or a hang)."""
    workdir.mkdir(parents=True, exist_ok=True)
    journal = workdir / "journal"
    res = Run()
    t0 = time.monotonic()
    nxt = start
    # no metadata cache (mutated metadata would fill it), but the kernels ingest runs: the
    # ones built ahead of time when this machine has them
    from stacklens.sources.ctf.compiled import build_dir
    env = dict(os.environ, STACKLENS_CACHE="off", STACKLENS_KERNELS_DIR=str(build_dir() or ""),
               PYTHONPATH=os.pathsep.join([str(CODE), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    while nxt < end:
        journal.write_text("")
        code = ("import sys, resource; from pathlib import Path; import ctf_fuzzing as F; "
                f"lim = {memory_limit_mb} << 20; resource.setrlimit(resource.RLIMIT_AS, (lim, lim)); "
                f"F.worker({seed}, {nxt}, {end}, Path({str(workdir)!r}), Path({str(journal)!r}), {dump_every})")
        # run from the work directory: `python -c` puts the current directory first on the path
        # (stderr to a file: a pipe nobody reads would block a worker that writes a lot)
        errf = open(workdir / "stderr", "w+b")
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                stderr=errf, start_new_session=True, cwd=workdir)
        pos = 0
        pending: tuple[int, str] | None = None
        last_move = time.monotonic()
        hung = False
        while True:
            try:
                proc.wait(timeout=0.2)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            with open(journal) as f:
                f.seek(pos)
                chunk = f.read()
            # complete lines only
            cut = chunk.rfind("\n") + 1
            pos += len(chunk[:cut].encode())
            for line in chunk[:cut].splitlines():
                parts = line.split("\t", 3)
                if parts[0] == "B":
                    pending = (int(parts[1]), parts[2] if len(parts) > 2 else "")
                    last_move = time.monotonic()
                elif parts[0] == "R":
                    i = int(parts[1])
                    r = Result(i, parts[2], parts[3] if len(parts) > 3 else "",
                               pending[1] if pending and pending[0] == i else "")
                    res.results.append(r)
                    if r.outcome in FAILURES and keep_failures is not None:
                        _keep(workdir, keep_failures, seed, r)
                    if on_result is not None:
                        on_result(r)
                    pending = None
                    nxt = i + 1
                    last_move = time.monotonic()
            if finished:
                break
            if pending is not None and time.monotonic() - last_move > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                hung = True
                break
        errf.seek(max(0, errf.seek(0, 2) - 4000))
        err = errf.read().decode(errors="replace")
        errf.close()
        if pending is not None:
            # died (or was killed) inside mutation `pending`
            i, desc = pending
            if hung:
                r = Result(i, "hang", f"no result after {timeout:.0f} s", desc)
            else:
                r = Result(i, "crash", f"worker exit {proc.returncode}: {err.strip()[-300:]}", desc)
            res.results.append(r)
            if keep_failures is not None:
                _keep(workdir, keep_failures, seed, r)
            if on_result is not None:
                on_result(r)
            nxt = i + 1
            res.restarts += 1
        elif proc.returncode != 0 and nxt < end:
            raise RuntimeError(f"fuzz worker failed outside a mutation (exit {proc.returncode}): {err[-2000:]}")
    res.seconds = time.monotonic() - t0
    return res


def _keep(workdir: Path, dest: Path, seed: int, r: Result) -> None:
    """The failing input (made again from its seed and index, links resolved) and what it
    was, under dest."""
    d = dest / f"{r.outcome}-{seed}-{r.index}"
    tmp = workdir / "keep"
    make_mutation(seed, r.index, prepare_seeds(workdir / "seeds"), tmp)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(tmp, d, symlinks=False)
    shutil.rmtree(tmp)
    # (next to the trace directory: a file inside would be read as a stream file)
    (dest / f"{d.name}.txt").write_text(f"seed {seed} index {r.index}\n{r.mutation}\n{r.outcome}: {r.detail}\n")
