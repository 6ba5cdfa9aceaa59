"""The instruction sets of the CTF path's compiled code, as plain constants: the decoder's
programs (`decode.py` compiles layouts into them, `kernels.py` runs them) and the JSON
programs of the event rows (`rowjson.py`). Importing this needs no numba: the kernels are
compiled ahead of time when they can be (`aot.py`)."""

import sys

# --- instruction set -----------------------------------------------------------------
OPW = 8
OP_END, OP_ALIGN, OP_INT, OP_FLOAT, OP_STRING, OP_CHARS, OP_LOOP, OP_LOOP_END, OP_VARIANT, \
    OP_JUMP, OP_BLOB, OP_OPT = range(12)

F_SIGNED, F_BE, F_CLOCK, F_ID, F_PSIZE, F_CSIZE, F_MAGIC, F_SID = 1, 2, 4, 8, 16, 32, 64, 128
F_DISC = 256

# st[] indices: the mutable state of the decoder, kept between calls
S_BIT, S_END, S_CLOCK, S_ATOP, S_PSIZE, S_CSIZE, S_ID, S_SID, S_CAP, S_ERRV, S_P, S_PHASE, \
    S_PKTEND, S_NPKT, S_DISC, S_HAVE, S_ZWORK, S_ZMAX, S_WANTSID, S_SKIPEV = range(20)
NST = 24
HAVE_PSIZE, HAVE_CSIZE = 1, 2  # S_HAVE bits: the packet context gave these sizes

# status codes
OK, FULL, DONE = 0, 1, 2
E_TRUNC, E_PSIZE, E_MAGIC, E_SID, E_EVID, E_VARIANT, E_LEN, E_STRING, E_DEPTH, E_CSIZE, \
    E_EMPTY, E_ZWORK, E_PEND = -1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12, -13

ERRORS = {
    E_TRUNC: "event or packet field extends past the end of the packet content",
    E_PSIZE: "bad packet size (bits: not a positive multiple of 8)",
    E_MAGIC: "bad packet magic number",
    E_SID: "packet of another stream class in the same stream file",
    E_EVID: "unknown event class id",
    E_VARIANT: "variant selector value selects no option",
    E_LEN: "array/sequence/string length exceeds what is left of the packet",
    E_STRING: "unterminated string",
    E_DEPTH: "nesting too deep",
    E_CSIZE: "packet content size larger than the packet or smaller than its header",
    E_EMPTY: "event record of zero bits (the stream cannot advance)",
    E_ZWORK: "too many array/sequence elements that take no bits",
    E_PEND: "packet size runs past the end of the file",
}

CTF_MAGIC = 0xC1FC1FC1
MAX_DEPTH = 32
MAX_ALIGN = 1 << 32  # bits: far above any real alignment (a page is 32768), low enough that
#                      bit offsets (< 2^60 for any file) plus an alignment never overflow int64
MAX_LENGTH = 1 << 48  # elements/bytes of a static array or BLOB: n * 64 bits stays < 2^63
MAX_MIN_BITS = 1 << 52  # the smallest size of an element, saturated (only compared by division)
CLASS_TABLE = 1 << 16  # event class ids below this are looked up in a table
ZERO_BIT_ELEMENTS = 65536  # one array/sequence of elements that take no bits: at most this


LITTLE_ENDIAN_HOST = sys.byteorder == "little"  # load_u64 reads in the host's order


# JSON program instructions: rows of (op, a, b, c)
J_END, J_LIT, J_KEY, J_INT, J_U64, J_STR, J_LIST, J_LIST_END, J_IFSEL, J_IFOPT, J_TOPOPT = range(11)
