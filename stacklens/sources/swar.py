"""Vector and word-at-a-time primitives for the compiled text scanners.

numba has no SIMD types, so these are small LLVM intrinsics: a 64-byte block is loaded as
one vector, compared against byte classes, and each comparison becomes a 64-bit mask (bit
i = byte i); LLVM lowers that to the machine's vector compares (AVX-512, AVX2 or SSE2
movemask, NEON). Scanners then iterate a mask with count-trailing-zeros instead of looping
over bytes. Loads and stores are unaligned (x86-64 and AArch64 allow them); callers keep
the whole load inside the array (a padded copy for an array's last bytes).
"""

from __future__ import annotations

import numba as nb
from llvmlite import binding, ir
from numba import types
from numba.extending import intrinsic


# Options for compiled functions that allocate nothing: compiled without numba's reference
# counting, whose atomic increments on the arrays passed to calls and on every array slice
# took a quarter of the JSON scan. Such a function may not allocate, slice or return arrays
# (copy with loops); it may be called from any compiled function.
NO_REFCOUNT = dict(cache=True, nogil=True, _nrt=False)


@nb.njit(inline="always", **NO_REFCOUNT)
def copy_bytes(src, s, n, dst, o):  # noqa: ANN001, ANN201
    """dst[o:o + n] = src[s:s + n], as a loop (a slice would be reference counted)."""
    for j in range(n):
        dst[o + j] = src[s + j]


@intrinsic
def load_u64(typingctx, arr, idx):  # noqa: ANN001, ANN201
    """The 8 bytes arr[idx:idx + 8] as a little-endian uint64 (unaligned load)."""
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)
    return types.uint64(arr, idx), codegen


@intrinsic
def store_u64(typingctx, arr, idx, value):  # noqa: ANN001, ANN201
    """arr[idx:idx + 8] = the little-endian bytes of uint64 `value` (unaligned store)."""
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(64).as_pointer())
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()
    return types.none(arr, idx, value), codegen


@intrinsic
def trailing_zeros(typingctx, value):  # noqa: ANN001, ANN201
    """Count of trailing zero bits of a non-zero uint64."""
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))
    return types.uint64(value), codegen


# 64-byte blocks: one vector compare per byte class, each turned into a 64-bit mask (bit i =
# byte i). Written as LLVM vector IR so that LLVM picks the machine's vector instructions
# (AVX-512 mask compares, AVX2/SSE2 compare + movemask, NEON) — numba exposes no SIMD itself.
_V64 = ir.VectorType(ir.IntType(8), 64)


def _splat(byte: int) -> ir.Constant:
    return ir.Constant(_V64, [byte] * 64)


def _load_block(context, builder, sig, args):  # noqa: ANN001, ANN202
    ary = context.make_array(sig.args[0])(context, builder, args[0])
    ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), _V64.as_pointer())
    return builder.load(ptr, align=1)


def _mask_of(builder, *preds):  # noqa: ANN001, ANN202
    acc = preds[0]
    for p in preds[1:]:
        acc = builder.or_(acc, p)
    return builder.bitcast(acc, ir.IntType(64))


@intrinsic
def json_classes(typingctx, arr, idx):  # noqa: ANN001, ANN201
    """Masks of arr[idx:idx + 64] (64 bytes must be readable): (quote, backslash, control
    byte < 0x20, JSON whitespace, structural operator {}[]:,)."""
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        v = _load_block(context, builder, sig, args)

        def eq(byte):  # noqa: ANN001, ANN202
            return builder.icmp_unsigned("==", v, _splat(byte))
        folded = builder.or_(v, _splat(0x20))  # '[' → '{', ']' → '}'
        masks = [_mask_of(builder, eq(0x22)), _mask_of(builder, eq(0x5C)),
                 _mask_of(builder, builder.icmp_unsigned("<", v, _splat(0x20))),
                 _mask_of(builder, eq(0x20), eq(0x0A), eq(0x0D), eq(0x09)),
                 _mask_of(builder, builder.icmp_unsigned("==", folded, _splat(0x7B)),
                          builder.icmp_unsigned("==", folded, _splat(0x7D)), eq(0x3A), eq(0x2C))]
        return context.make_tuple(builder, sig.return_type, masks)
    return types.UniTuple(types.uint64, 5)(arr, idx), codegen


@intrinsic
def escape_classes(typingctx, arr, idx):  # noqa: ANN001, ANN201
    """Masks of arr[idx:idx + 64]: (bytes that may follow a backslash in a JSON string:
    " \\ / b f n r t u;  'u')."""
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        v = _load_block(context, builder, sig, args)

        def eq(byte):  # noqa: ANN001, ANN202
            return builder.icmp_unsigned("==", v, _splat(byte))
        u = eq(0x75)
        valid = _mask_of(builder, eq(0x22), eq(0x5C), eq(0x2F), eq(0x62), eq(0x66), eq(0x6E),
                         eq(0x72), eq(0x74), u)
        return context.make_tuple(builder, sig.return_type, [valid, _mask_of(builder, u)])
    return types.UniTuple(types.uint64, 2)(arr, idx), codegen


@intrinsic
def string_classes(typingctx, arr, idx):  # noqa: ANN001, ANN201
    """Masks of arr[idx:idx + 64] for reading inside a JSON string: (quote, backslash,
    control byte, bytes that may not follow a backslash (all but " \\ / b f n r t u), bytes
    whose escape is not the byte itself (all but " \\ /), 'u')."""
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        v = _load_block(context, builder, sig, args)

        def eq(byte):  # noqa: ANN001, ANN202
            return builder.icmp_unsigned("==", v, _splat(byte))
        quote, backslash, u = eq(0x22), eq(0x5C), eq(0x75)
        itself = builder.or_(builder.or_(quote, backslash), eq(0x2F))
        escapable = builder.or_(builder.or_(builder.or_(itself, u), builder.or_(eq(0x62), eq(0x66))),
                                builder.or_(builder.or_(eq(0x6E), eq(0x72)), eq(0x74)))
        masks = [_mask_of(builder, quote), _mask_of(builder, backslash),
                 _mask_of(builder, builder.icmp_unsigned("<", v, _splat(0x20))),
                 _mask_of(builder, builder.not_(escapable)), _mask_of(builder, builder.not_(itself)),
                 _mask_of(builder, u)]
        return context.make_tuple(builder, sig.return_type, masks)
    return types.UniTuple(types.uint64, 6)(arr, idx), codegen


@intrinsic
def popcount(typingctx, value):  # noqa: ANN001, ANN201
    """Number of set bits of a uint64."""
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        return builder.ctpop(args[0])
    return types.uint64(value), codegen


@intrinsic
def byte_mask(typingctx, arr, idx, byte):  # noqa: ANN001, ANN201
    """Mask of the bytes of arr[idx:idx + 64] equal to `byte`."""
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        v = _load_block(context, builder, sig, args[:2])
        b = builder.trunc(args[2], ir.IntType(8))
        one = builder.insert_element(ir.Constant(_V64, None), b, ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(ir.IntType(32), 64), [0] * 64))
        return _mask_of(builder, builder.icmp_unsigned("==", v, splat))
    return types.uint64(arr, idx, byte), codegen


def _host_has(feature: str) -> bool:
    try:
        return bool(binding.get_host_cpu_features().get(feature, False))
    except RuntimeError:  # features unknown: assume the plain target
        return False


# AVX-512 VBMI2's byte compress; compress_block must not be compiled where it is False.
HAS_COMPRESS = _host_has("avx512vbmi2")


@intrinsic
def compress_block(typingctx, src, src_idx, keep, dst, dst_idx):  # noqa: ANN001, ANN201
    """The bytes of src[src_idx:src_idx + 64] whose bit is set in `keep`, in order, written
    to dst[dst_idx:] — followed by garbage up to 64 bytes: dst needs 64 bytes of room. One
    VPCOMPRESSB into a register and a plain store (the compressing store to memory is
    microcoded and slow on some CPUs). Only where HAS_COMPRESS."""
    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        v = _load_block(context, builder, sig, args[:2])
        i1x64 = ir.VectorType(ir.IntType(1), 64)
        fnty = ir.FunctionType(_V64, [_V64, _V64, i1x64])
        fn = _declare(builder.module, "llvm.x86.avx512.mask.compress.v64i8", fnty)
        packed = builder.call(fn, [v, ir.Constant(_V64, None), builder.bitcast(args[2], i1x64)])
        dst_ary = context.make_array(sig.args[3])(context, builder, args[3])
        ptr = builder.bitcast(builder.gep(dst_ary.data, [args[4]]), _V64.as_pointer())
        builder.store(packed, ptr, align=1)
        return context.get_dummy_value()
    return types.none(src, src_idx, keep, dst, dst_idx), codegen


def _declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    return module.globals.get(name) or ir.Function(module, fnty, name)
