"""SIMD building blocks of the CPU kernels: a vector type and its intrinsics.

Numba has no vector type, and LLVM keeps a micro-kernel's accumulators in
registers only when it can prove they are private scalars.  A plain local
``np.empty`` is a heap (NRT) allocation LLVM cannot promote, so the
accumulators of a blocked kernel would round-trip through memory on every
multiply-add.  The intrinsics here give the kernels what C intrinsics give
oneDNN or NNPACK:

* a vector type of one register of the target (:data:`VECTOR_BYTES`: 16 x
  float32 or 8 x float64 in a zmm register on AVX-512, 8 or 4 in a ymm
  register on AVX2; :mod:`fastconv.cpu.target`);
* :func:`vload`, :func:`vstore`, :func:`vbcast` (scalar load + splat),
  :func:`vfma` (``llvm.fma``: one rounding, so it never loosens the direct
  sum's error bound) and :func:`vadd`, :func:`vsub`, :func:`vmul`;
  :func:`vload_f64` / :func:`vstore_f64`: :data:`F64_LANES` lanes of either
  dtype as a float64 vector (widened exactly, rounded once on the way back);
* :func:`stack_vectors` / :func:`stack_ints`: fixed-size arrays placed with
  ``alloca`` in the function's entry block.  Indexed with compile-time
  constants inside fully unrolled loops, SROA turns each element into an SSA
  value, i.e. a register.

All pointer arithmetic is raw: indices are element offsets into a 1-D
C-contiguous array, never wrapped around when negative and never bounds
checked.  Callers guarantee they stay in range.

The packing passes that feed these kernels are in :mod:`fastconv.cpu.packing`.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, models, register_model

from .._config import JIT
from .target import detect as detect_target

#: The machine the kernels are compiled for (:mod:`fastconv.cpu.target`).
TARGET = detect_target()
#: Bytes of one vector: one register of the target (64 on AVX-512, 32 on AVX2).
VECTOR_BYTES = TARGET.vector_bytes
#: Lanes of the float64 vectors of :func:`vload_f64` / :func:`vstore_f64`.
F64_LANES = VECTOR_BYTES // 8
#: Vector accumulators a register-blocked micro-kernel keeps: three quarters of the
#: target's vector registers (24 of AVX-512's 32, 12 of AVX2's 16), the rest holding the
#: vectors that meet them and a broadcast.  Every kernel's register block derives from it.
ACCUMULATORS = TARGET.registers * 3 // 4
#: The target's vector registers.
REGISTERS = TARGET.registers


def lanes(dtype) -> int:
    """Vector lanes of ``dtype`` (16 float32 / 8 float64 on AVX-512, 8 / 4 on AVX2)."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


class SimdVector(types.Type):
    """One target register of ``dtype`` (lowered to ``<L x float|double>``, ``L`` = :func:`lanes`)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.count = VECTOR_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"SimdVector({dtype}x{self.count})")


class StackArray(types.Type):
    """Pointer to an ``alloca``'d fixed-size array of ``elem`` (a SimdVector or an integer)."""

    def __init__(self, elem):
        self.elem = elem
        super().__init__(name=f"StackArray({elem})")


@register_model(SimdVector)
class _SimdVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        scalar = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(scalar, fe_type.count))


@register_model(StackArray)
class _StackArrayModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, dmm.lookup(fe_type.elem).get_value_type().as_pointer())


def _is_float_array(a):
    return isinstance(a, types.Array) and isinstance(a.dtype, types.Float)


def _element_ptr(context, builder, arrty, arr, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.gep(ary.data, [idx])


@intrinsic
def vload(typingctx, arr, idx):
    """Unaligned vector load of ``arr[idx : idx + L]`` (flat element index)."""
    if not (_is_float_array(arr) and isinstance(idx, types.Integer)):
        return None
    vty = SimdVector(arr.dtype)

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        vptr = builder.bitcast(ptr, context.get_value_type(vty).as_pointer())
        return builder.load(vptr, align=arr.dtype.bitwidth // 8)

    return vty(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):
    """Unaligned vector store of ``v`` to ``arr[idx : idx + L]``."""
    if not (_is_float_array(arr) and isinstance(idx, types.Integer)
            and isinstance(v, SimdVector) and v.dtype == arr.dtype):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        vptr = builder.bitcast(ptr, args[2].type.as_pointer())
        builder.store(args[2], vptr, align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(arr, idx, v), codegen


@intrinsic
def vload_f64(typingctx, arr, idx):
    """``arr[idx : idx + F64_LANES]`` as a float64 vector, widened exactly from float32."""
    if not (_is_float_array(arr) and isinstance(idx, types.Integer)):
        return None
    vty = SimdVector(types.float64)
    src = ir.VectorType(ir.FloatType() if arr.dtype == types.float32 else ir.DoubleType(), F64_LANES)

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        v = builder.load(builder.bitcast(ptr, src.as_pointer()), align=arr.dtype.bitwidth // 8)
        return builder.fpext(v, context.get_value_type(vty)) if arr.dtype == types.float32 else v

    return vty(arr, idx), codegen


@intrinsic
def vstore_f64(typingctx, arr, idx, v):
    """Store float64 vector ``v`` to ``arr[idx : idx + F64_LANES]``, rounded once to float32 if needed."""
    if not (_is_float_array(arr) and isinstance(idx, types.Integer)
            and isinstance(v, SimdVector) and v.dtype == types.float64):
        return None
    dst = ir.VectorType(ir.FloatType() if arr.dtype == types.float32 else ir.DoubleType(), F64_LANES)

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        val = builder.fptrunc(args[2], dst) if arr.dtype == types.float32 else args[2]
        builder.store(val, builder.bitcast(ptr, dst.as_pointer()), align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(arr, idx, v), codegen


@intrinsic
def vtranspose(typingctx, src, si, ss, dst, di, ds):
    """Copy an ``L x L`` block transposed: row ``i`` of ``dst`` (``dst[di + i*ds :][:L]``)
    becomes column ``i`` of the rows ``src[si + j*ss :][:L]``, ``j < L``.

    The ``L`` rows are loaded as vectors, transposed in registers by
    ``log2(L)`` rounds of two-source shuffles (round ``b`` swaps bit ``b`` of
    the row and column index) and stored as vectors: about a quarter of the
    cycles of ``L * L`` scalar copies.  Blocked -> NCHW output is this
    transpose (``L`` channels by ``L`` pixels).
    """
    if not (_is_float_array(src) and _is_float_array(dst) and src.dtype == dst.dtype
            and all(isinstance(a, types.Integer) for a in (si, ss, di, ds))):
        return None
    L = VECTOR_BYTES * 8 // src.dtype.bitwidth
    align = src.dtype.bitwidth // 8

    def codegen(context, builder, sig, args):
        s, d = args[0], args[3]
        si_, ss_, di_, ds_ = (context.cast(builder, args[k], sig.args[k], types.int64)
                              for k in (1, 2, 4, 5))
        vt = ir.VectorType(context.get_value_type(sig.args[0].dtype), L)
        i64, i32 = ir.IntType(64), ir.IntType(32)

        def row_ptr(arrty, arr, base, stride, i):
            idx = builder.add(base, builder.mul(stride, ir.Constant(i64, i)))
            return builder.bitcast(_element_ptr(context, builder, arrty, arr, idx), vt.as_pointer())

        rows = [builder.load(row_ptr(sig.args[0], s, si_, ss_, i), align=align) for i in range(L)]
        b = 1
        while b < L:
            # rows i (bit b clear) and j = i | b: new row i takes its odd b-blocks from row j,
            # new row j its even b-blocks from row i.
            lo = ir.Constant(ir.VectorType(i32, L), [k if not k & b else L + k - b for k in range(L)])
            hi = ir.Constant(ir.VectorType(i32, L), [k + b if not k & b else L + k for k in range(L)])
            new = list(rows)
            for i in range(L):
                if not i & b:
                    new[i] = builder.shuffle_vector(rows[i], rows[i | b], lo)
                    new[i | b] = builder.shuffle_vector(rows[i], rows[i | b], hi)
            rows = new
            b *= 2
        for i in range(L):
            builder.store(rows[i], row_ptr(sig.args[3], d, di_, ds_, i), align=align)
        return context.get_dummy_value()

    return types.void(src, si, ss, dst, di, ds), codegen


@intrinsic
def vinterleave(typingctx, src, si, ss, n, dst, di):
    """Interleave ``n`` rows of ``L`` elements: ``dst[di + e*n + j] = src[si + j*ss + e]``.

    ``n`` (a compile-time constant, 2 to ``L``) rows ``src[si + j*ss :][:L]``
    are loaded as vectors, concatenated and permuted in registers, and stored
    as ``n`` contiguous vectors: the channel-blocked layout of ``n`` channels
    (a 3-channel input's rows: ``Vc = 3``) without strided scalar stores.
    """
    if not (_is_float_array(src) and _is_float_array(dst) and src.dtype == dst.dtype
            and all(isinstance(a, types.Integer) for a in (si, ss, di))
            and isinstance(n, types.IntegerLiteral)):
        return None
    L = VECTOR_BYTES * 8 // src.dtype.bitwidth
    count = n.literal_value
    if not 2 <= count <= L:
        return None
    align = src.dtype.bitwidth // 8

    def codegen(context, builder, sig, args):
        s, d = args[0], args[4]
        si_, ss_, di_ = (context.cast(builder, args[k], sig.args[k], types.int64)
                         for k in (1, 2, 5))
        vt = ir.VectorType(context.get_value_type(sig.args[0].dtype), L)
        i64, i32 = ir.IntType(64), ir.IntType(32)

        def ptr(arrty, arr, idx):
            return builder.bitcast(_element_ptr(context, builder, arrty, arr, idx), vt.as_pointer())

        parts = [builder.load(ptr(sig.args[0], s, builder.add(si_, builder.mul(
            ss_, ir.Constant(i64, j)))), align=align) for j in range(count)]
        # concatenate pairwise (rows stay in order; an odd one out is padded with undef)
        while len(parts) > 1:
            width = parts[0].type.count
            if len(parts) % 2:
                parts.append(ir.Constant(parts[0].type, ir.Undefined))
            mask = ir.Constant(ir.VectorType(i32, 2 * width), list(range(2 * width)))
            parts = [builder.shuffle_vector(parts[k], parts[k + 1], mask)
                     for k in range(0, len(parts), 2)]
        whole = parts[0]
        undef = ir.Constant(whole.type, ir.Undefined)
        for q in range(count):  # output vector q: elements k = q*L .. q*L + L - 1
            idx = [(k % count) * L + k // count for k in range(q * L, q * L + L)]
            v = builder.shuffle_vector(whole, undef, ir.Constant(ir.VectorType(i32, L), idx))
            builder.store(v, ptr(sig.args[4], d, builder.add(di_, ir.Constant(i64, q * L))),
                          align=align)
        return context.get_dummy_value()

    return types.void(src, si, ss, n, dst, di), codegen


@numba.njit(**JIT)
def all_finite(v, tmp):
    """True if every lane of the vector ``v`` is finite (``tmp``: scratch for one vector).

    The Winograd kernels fold their outputs into such a vector (a running
    ``0 * y`` or a running sum): any NaN, inf or overflow leaves a lane not finite.
    """
    vstore(tmp, 0, v)
    flag = False
    for lane in range(VECTOR_BYTES // tmp.itemsize):
        flag |= tmp[lane] - tmp[lane] != 0
    return not flag


@intrinsic
def vstore_interleave4(typingctx, arr, idx, a, b, c, d, n):
    """Store ``arr[idx + 4*t + j] = (a, b, c, d)[j][t]`` for the first ``n`` (<= 4L) elements.

    The four vectors are interleaved in registers (two-source shuffles) and
    written as four vector stores, masked past ``n``: a row of ``L`` output
    tiles of width 4 (Winograd F(4x4) output rows ``j = 0..3``).
    """
    if not (_is_float_array(arr) and isinstance(idx, types.Integer) and isinstance(n, types.Integer)
            and isinstance(a, SimdVector) and a == b == c == d and a.dtype == arr.dtype):
        return None
    L = a.count

    def codegen(context, builder, sig, args):
        arr_, idx_, va, vb, vc, vd, n_ = args
        i32 = ir.IntType(32)
        vt = va.type
        ab = builder.shuffle_vector(va, vb, ir.Constant(ir.VectorType(i32, 2 * L), list(range(2 * L))))
        cd = builder.shuffle_vector(vc, vd, ir.Constant(ir.VectorType(i32, 2 * L), list(range(2 * L))))
        nn = context.cast(builder, n_, sig.args[6], types.int64)
        idx64 = context.cast(builder, idx_, sig.args[1], types.int64)
        fnty = ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32, ir.VectorType(ir.IntType(1), L)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.store.{_vname(vt)}.p0")
        align = arr.dtype.bitwidth // 8
        rows, ptrs = [], []
        for q in range(4):
            # element e = q*L + l of the output is (t, j) = divmod(e, 4): lane t of input j,
            # which is index j*L + t of the concatenation a|b|c|d.
            mask = [((q * L + l) % 4) * L + (q * L + l) // 4 for l in range(L)]
            rows.append(builder.shuffle_vector(ab, cd, ir.Constant(ir.VectorType(i32, L), mask)))
            off = builder.add(idx64, ir.Constant(ir.IntType(64), q * L))
            ptrs.append(builder.bitcast(_element_ptr(context, builder, sig.args[0], arr_, off),
                                        vt.as_pointer()))
        # Masked stores cost several times a plain one on AMD Zen: only the ragged end uses them.
        full = builder.icmp_signed(">=", nn, ir.Constant(ir.IntType(64), 4 * L))
        with builder.if_else(full) as (then, otherwise):
            with then:
                for v, ptr in zip(rows, ptrs):
                    builder.store(v, ptr, align=align)
            with otherwise:
                for q, (v, ptr) in enumerate(zip(rows, ptrs)):
                    left = builder.sub(nn, ir.Constant(ir.IntType(64), q * L))
                    m = _lane_mask(context, builder, left, types.int64, L)
                    builder.call(fn, [v, ptr, ir.Constant(i32, align), m])
        return context.get_dummy_value()

    return types.void(arr, idx, a, b, c, d, n), codegen


def _vname(vt):
    """LLVM's overload suffix of a vector type, e.g. ``v16f32``."""
    bits = 32 if isinstance(vt.element, ir.FloatType) else 64
    return f"v{vt.count}f{bits}"


def _splat(builder, scalar, count):
    vec = ir.Constant(ir.VectorType(scalar.type, count), ir.Undefined)
    vec = builder.insert_element(vec, scalar, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), count), [0] * count)
    return builder.shuffle_vector(vec, vec, mask)


@intrinsic
def vbcast(typingctx, arr, idx):
    """Vector whose every lane is ``arr[idx]`` (folds into an FMA's ``{1toL}`` operand)."""
    if not (_is_float_array(arr) and isinstance(idx, types.Integer)):
        return None
    vty = SimdVector(arr.dtype)

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        return _splat(builder, builder.load(ptr), vty.count)

    return vty(arr, idx), codegen


@intrinsic
def vsplat(typingctx, value, like):
    """Vector of ``like``'s dtype with every lane equal to ``value``."""
    if not (_is_float_array(like) and isinstance(value, (types.Float, types.Integer))):
        return None
    vty = SimdVector(like.dtype)

    def codegen(context, builder, sig, args):
        scalar = context.cast(builder, args[0], sig.args[0], like.dtype)
        return _splat(builder, scalar, vty.count)

    return vty(value, like), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` lane-wise with a single rounding (``llvm.fma``)."""
    if not (isinstance(a, SimdVector) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        vt = args[0].type
        fnty = ir.FunctionType(vt, [vt, vt, vt])
        fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.{_vname(vt)}")
        return builder.call(fn, list(args))

    return a(a, b, c), codegen


def _lanewise(op: str, symbol: str):
    """An intrinsic ``f(a, b)``: lane-wise ``a <symbol> b`` of two equal SimdVectors
    (LLVM's ``op``: fadd, fsub or fmul; one rounding per lane)."""

    def typer(typingctx, a, b):
        if not (isinstance(a, SimdVector) and a == b):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return a(a, b), codegen

    typer.__name__ = typer.__qualname__ = f"v{op[1:]}"
    typer.__doc__ = f"Lane-wise ``a {symbol} b``."
    return intrinsic(typer)


vadd = _lanewise("fadd", "+")
vsub = _lanewise("fsub", "-")
vmul = _lanewise("fmul", "*")
vdiv = _lanewise("fdiv", "/")


@intrinsic
def vfloor(typingctx, v):
    """Lane-wise ``floor(v)`` (``llvm.floor``: one instruction, no library call)."""
    if not isinstance(v, SimdVector):
        return None

    def codegen(context, builder, sig, args):
        vt = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt]),
                                            f"llvm.floor.{_vname(vt)}")
        return builder.call(fn, [args[0]])

    return v(v), codegen


@intrinsic
def vselect_lt(typingctx, a, b, x, y):
    """Lane-wise ``x if a < b else y`` (an ordered compare: false where either is NaN)."""
    if not (isinstance(a, SimdVector) and a == b == x == y):
        return None

    def codegen(context, builder, sig, args):
        return builder.select(builder.fcmp_ordered("<", args[0], args[1]), args[2], args[3])

    return a(a, b, x, y), codegen


@intrinsic
def vpow2(typingctx, k):
    """Lane-wise ``2 ** k`` for integer-valued lanes in the normal range (-126..127 for
    float32, -1022..1023 for float64), built from the exponent bits."""
    if not isinstance(k, SimdVector):
        return None
    bits, mant, bias = (32, 23, 127) if k.dtype.bitwidth == 32 else (64, 52, 1023)

    def codegen(context, builder, sig, args):
        it = ir.VectorType(ir.IntType(bits), k.count)
        ki = builder.fptosi(args[0], it)
        e = builder.shl(builder.add(ki, ir.Constant(it, [bias] * k.count)),
                        ir.Constant(it, [mant] * k.count))
        return builder.bitcast(e, args[0].type)

    return k(k), codegen


@intrinsic
def vcount(typingctx, like):
    """Lanes of a vector of ``like``'s dtype, as a compile-time constant (no division)."""
    if not _is_float_array(like):
        return None
    count = SimdVector(like.dtype).count

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(64), count)

    return types.int64(like), codegen


@intrinsic
def vclamp(typingctx, v, lo, hi, upper):
    """Lane-wise ``lo if v < lo else (hi if upper and v > hi else v)`` (compare and select).

    NaN lanes stay NaN (both comparisons are false for NaN), as in PyTorch's
    ``relu`` and ``relu6``; ``upper`` (a bool) says whether ``hi`` applies.
    """
    if not (isinstance(v, SimdVector) and v == lo == hi and isinstance(upper, types.Boolean)):
        return None

    def codegen(context, builder, sig, args):
        x, a, b, up = args
        x = builder.select(builder.fcmp_ordered("<", x, a), a, x)
        clipped = builder.select(builder.fcmp_ordered(">", x, b), b, x)
        return builder.select(up, clipped, x)

    return v(v, lo, hi, upper), codegen


def _literal_count(n):
    return isinstance(n, types.IntegerLiteral) and n.literal_value > 0


@intrinsic
def stack_vectors(typingctx, like, n):
    """``n`` (a compile-time constant) vectors of ``like``'s dtype on the stack."""
    if not (_is_float_array(like) and _literal_count(n)):
        return None
    count = n.literal_value
    sty = StackArray(SimdVector(like.dtype))

    def codegen(context, builder, sig, args):
        elem = context.get_value_type(sty.elem)
        base = cgutils.alloca_once(builder, elem, size=count)
        return base

    return sty(like, n), codegen


@intrinsic
def stack_ints(typingctx, n):
    """``n`` (a compile-time constant) int64 slots on the stack."""
    if not _literal_count(n):
        return None
    count = n.literal_value
    sty = StackArray(types.int64)

    def codegen(context, builder, sig, args):
        return cgutils.alloca_once(builder, ir.IntType(64), size=count)

    return sty(n), codegen


@intrinsic
def sget(typingctx, buf, i):
    """Element ``i`` of a stack array."""
    if not (isinstance(buf, StackArray) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(builder.gep(args[0], [args[1]]))

    return buf.elem(buf, i), codegen


@intrinsic
def sset(typingctx, buf, i, v):
    """Set element ``i`` of a stack array."""
    if not (isinstance(buf, StackArray) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], buf.elem)
        builder.store(v, builder.gep(args[0], [args[1]]))
        return context.get_dummy_value()

    return types.void(buf, i, v), codegen


def _lane_mask(context, builder, n, nty, count):
    """``<count x i1>``: lane ``i`` is set when ``i < n`` (the masked load and store)."""
    i32 = ir.IntType(32)
    lanes_ = ir.Constant(ir.VectorType(i32, count), list(range(count)))
    nn = builder.trunc(context.cast(builder, n, nty, types.int64), i32)
    return builder.icmp_signed("<", lanes_, _splat(builder, nn, count))


@intrinsic
def vstore_masked(typingctx, arr, idx, v, n):
    """Store the first ``n`` lanes of ``v`` to ``arr[idx : idx + n]`` (``llvm.masked.store``)."""
    if not (_is_float_array(arr) and isinstance(idx, types.Integer)
            and isinstance(v, SimdVector) and v.dtype == arr.dtype
            and isinstance(n, types.Integer)):
        return None
    count = v.count

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        vptr = builder.bitcast(ptr, args[2].type.as_pointer())
        i32 = ir.IntType(32)
        mask = _lane_mask(context, builder, args[3], sig.args[3], count)
        vt = args[2].type
        fnty = ir.FunctionType(ir.VoidType(), [vt, vptr.type, i32, mask.type])
        fn = cgutils.get_or_insert_function(builder.module, fnty,
                                            f"llvm.masked.store.{_vname(vt)}.p0")
        builder.call(fn, [args[2], vptr, ir.Constant(i32, arr.dtype.bitwidth // 8), mask])
        return context.get_dummy_value()

    return types.void(arr, idx, v, n), codegen


@intrinsic
def vload_masked(typingctx, arr, idx, n):
    """The first ``n`` lanes from ``arr[idx : idx + n]``, zeros in the others (``llvm.masked.load``).

    Lanes past ``n`` are not read, so the load never touches memory past the end.
    """
    if not (_is_float_array(arr) and isinstance(idx, types.Integer) and isinstance(n, types.Integer)):
        return None
    vty = SimdVector(arr.dtype)

    def codegen(context, builder, sig, args):
        vt = context.get_value_type(vty)
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        vptr = builder.bitcast(ptr, vt.as_pointer())
        i32 = ir.IntType(32)
        count = vty.count
        mask = _lane_mask(context, builder, args[2], sig.args[2], count)
        zero = ir.Constant(vt, [ir.Constant(vt.element, 0.0)] * count)
        fnty = ir.FunctionType(vt, [vptr.type, i32, mask.type, vt])
        fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.load.{_vname(vt)}.p0")
        return builder.call(fn, [vptr, ir.Constant(i32, arr.dtype.bitwidth // 8), mask, zero])

    return vty(arr, idx, n), codegen


@intrinsic
def sload(typingctx, arr, idx):
    """``arr[idx]`` (flat index) without wraparound or bounds checks."""
    if not (_is_float_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_element_ptr(context, builder, sig.args[0], args[0], args[1]))

    return arr.dtype(arr, idx), codegen


@intrinsic
def sstore(typingctx, arr, idx, v):
    """``arr[idx] = v`` (flat index) without wraparound or bounds checks."""
    if not (_is_float_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], arr.dtype)
        builder.store(v, _element_ptr(context, builder, sig.args[0], args[0], args[1]))
        return context.get_dummy_value()

    return types.void(arr, idx, v), codegen

