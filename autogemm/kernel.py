"""A compiled GEMM kernel loaded with cffi, callable with numpy's matmul semantics."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cffi
import numpy as np

from .machine import Machine, available_cores
from .params import BLAS_LETTER, DTYPES, KernelParams, accumulator_dtype, numpy_dtype

#: Arrays travel as untyped pointers (the ABI is the same), so any numpy buffer passes without a cast.
_CDEF = """
int autogemm_{p}gemm_strided(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, {t} alpha,
    const void *a, ptrdiff_t rsa, ptrdiff_t csa, const void *b, ptrdiff_t rsb, ptrdiff_t csb,
    {t} beta, void *c, ptrdiff_t rsc, ptrdiff_t csc, const void *bias, int nthreads{sources});
int autogemm_{p}gemm_bench(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
    const void *a, const void *b, {t} beta, void *c, const void *bias, int nthreads, int warmup, int reps,
    void *seconds);
int autogemm_{p}gemm_path(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, ptrdiff_t rsa, ptrdiff_t csa, ptrdiff_t rsb,
    ptrdiff_t csb, ptrdiff_t rsc, ptrdiff_t csc, int bias, int nthreads);
int autogemm_{p}gemm_threads(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, int nthreads);
void autogemm_{p}gemm_phases(void *seconds);
"""
#: float32 kernels' dot path on a bfloat16 W, widened as loaded (see `Kernel._widened`).
_CDEF_W16 = """
void autogemm_sgemm_w16(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const void *x, ptrdiff_t rsx,
    const void *w, ptrdiff_t rsw, float beta, void *c, ptrdiff_t rsc, ptrdiff_t csc, const void *bias,
    ptrdiff_t bias_step, int nthreads);
int autogemm_sgemm_w16_rows(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const void *x, ptrdiff_t rsx,
    ptrdiff_t csx, const void *w, ptrdiff_t rsw, float beta, void *c, ptrdiff_t rsc, ptrdiff_t csc,
    const void *bias, int nthreads);
"""
#: The phases a profiling build times, in the order `autogemm_?gemm_phases` reports them.
PHASES = ("pack_b", "pack_a", "macro")
#: bfloat16 kernels' `sources` flags: which operands hold float32 (rounded to bfloat16 while packing).
A_FLOAT32, B_FLOAT32 = 1, 2


#: Loaded libraries stay loaded for the life of the process: their per-thread packing workspaces
#: are freed by a destructor inside the library when a thread exits, so it must never be unloaded.
_LOADED: list = []


@functools.lru_cache(maxsize=1)
def environment_threads() -> int | None:
    """$AUTOGEMM_NUM_THREADS, read once per process like OMP_NUM_THREADS (reading the environment
    costs more than a small GEMM's C call); `environment_threads.cache_clear()` re-reads it."""
    env = os.environ.get("AUTOGEMM_NUM_THREADS", "").strip()
    if not env:
        return None
    try:
        threads = int(env)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"AUTOGEMM_NUM_THREADS must be a positive integer, got {env!r}")
    return threads


def resolve_threads(threads: int | None, tuned: int | None = None) -> int:
    """`threads`, else $AUTOGEMM_NUM_THREADS, else the tuned count, else every core we may use."""
    if type(threads) is int and threads > 0:
        return threads
    if threads is None:
        threads = environment_threads()
        if threads is None:
            cores = available_cores()
            return min(tuned, cores) if tuned else cores
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)


_FLOAT32, _FLOAT64, _BFLOAT16 = np.dtype(np.float32), np.dtype(np.float64), numpy_dtype("bfloat16")


def computed_dtype(a: np.ndarray, b: np.ndarray) -> str:
    """The kernel dtype that computes a @ b as numpy would: bfloat16 when both are bfloat16, float64
    when either is float64, else float32 (a bfloat16 operand widens exactly). TypeError otherwise."""
    found = set()
    for x in (a, b):
        dtype = x.dtype if x.dtype.isnative else x.dtype.newbyteorder("=")
        if dtype not in (_FLOAT32, _FLOAT64, _BFLOAT16):
            raise TypeError(f"autogemm supports {', '.join(DTYPES)}; got {x.dtype}")
        found.add(dtype)
    if found == {_BFLOAT16}:
        return "bfloat16"
    return "float64" if _FLOAT64 in found else "float32"


def _element_strides(x: np.ndarray) -> tuple[int, int] | None:
    """Row and column strides in elements, or None if numpy's byte strides are not whole elements."""
    rs, cs = x.strides
    size = x.itemsize
    if rs % size or cs % size:
        return None
    return rs // size, cs // size


def _stacked_rows(x: np.ndarray) -> np.ndarray | None:
    """A stack x[..., r, c] as one matrix of all its rows, (N * r) x c, a view of the same memory, where
    every leading axis steps over the ones inside it evenly (a C-ordered stack, or one sliced along c);
    None where the rows would need a copy, or there are none."""
    rows, step, outer = 1, None, None
    for size, stride in zip(reversed(x.shape[:-1]), reversed(x.strides[:-1])):
        rows *= size
        if size == 1:
            continue
        if step is None:
            step = stride
        elif stride != outer:
            return None
        outer = stride * size
    if not rows:
        return None
    return np.lib.stride_tricks.as_strided(x, (rows, x.shape[-1]), (step or x.strides[-2], x.strides[-1]),
                                           writeable=x.flags.writeable)


class Kernel:
    """One compiled kernel. Call it like `numpy.matmul`; `gemm` is the BLAS-style operation."""

    def __init__(self, params: KernelParams, machine: Machine, library: Path, source: str):
        self.params = params
        self.machine = machine
        self.source = source
        self.library = library
        self.dtype = np.dtype(accumulator_dtype(params.dtype))  # of C, alpha, beta and the bias
        self.paired = params.dtype == "bfloat16"
        #: Operand dtypes the C entry point reads in place: a bfloat16 kernel also rounds float32 while packing.
        self._in_place = (_BFLOAT16, _FLOAT32) if self.paired else (self.dtype,)
        #: Operand dtypes `gemm` takes: those, and bfloat16 for a float32 kernel (numpy's float32 product),
        #: read in place where it is W on the dot path or rows_direct (`_widened`), else copied to float32.
        self.input_dtypes = self._in_place + ((_BFLOAT16,) if params.dtype == "float32" else ())
        self.tuned: dict | None = None  # the tuned-file entry this kernel came from, if any
        self.default_threads: int | None = None  # the thread count that entry was fastest with
        self._ctype = "float" if self.dtype == _FLOAT32 else "double"
        letter = BLAS_LETTER[params.dtype]
        self._ffi = cffi.FFI()
        self._ffi.cdef(_CDEF.format(p=letter, t=self._ctype, sources=", int sources" if self.paired else "")
                       + (_CDEF_W16 if params.dtype == "float32" else ""))
        self._lib = self._ffi.dlopen(str(library))
        self._from_buffer = self._ffi.from_buffer
        _LOADED.append((self._ffi, self._lib))
        self._strided = getattr(self._lib, f"autogemm_{letter}gemm_strided")
        self._bench = getattr(self._lib, f"autogemm_{letter}gemm_bench")
        self._path = getattr(self._lib, f"autogemm_{letter}gemm_path")
        self._w16 = getattr(self._lib, "autogemm_sgemm_w16", None) if params.dtype == "float32" else None
        self._w16_rows = getattr(self._lib, "autogemm_sgemm_w16_rows", None) if params.dtype == "float32" else None

    def __repr__(self) -> str:
        return f"<autogemm.Kernel {self.params.name} on {self.machine.machine_id}>"

    @property
    def entry_address(self) -> int:
        """The address of the library's `autogemm_?gemm_strided`, for callers in C."""
        return int(self._ffi.cast("uintptr_t", self._strided))

    def _pointer(self, x: np.ndarray):
        """The address of x[0, 0, ...]: the buffer itself when contiguous (a transposed one is read
        through its transpose, which starts at the same address), else numpy's data pointer."""
        flags = x.flags
        if flags.c_contiguous:
            return self._from_buffer(x)
        if flags.f_contiguous:
            return self._from_buffer(x.T)
        return self._ffi.cast("void *", x.ctypes.data)

    def as_input(self, x: np.ndarray) -> np.ndarray:
        """`x`, or a copy in the dtype this kernel reads when it cannot read x's (float32 for a
        bfloat16 kernel, whose packing rounds it)."""
        return x if x.dtype in self.input_dtypes else x.astype(self._in_place[-1])

    def _usable(self, x: np.ndarray) -> np.ndarray:
        """`x` itself when the C code can read it in place, else a contiguous native copy (float32
        for a bfloat16 kernel, whose packing rounds it)."""
        if x.dtype not in self._in_place or _element_strides(x) is None:
            return np.ascontiguousarray(x, dtype=self._in_place[-1])
        return x

    def gemm(self, a: np.ndarray, b: np.ndarray, c: np.ndarray, *, alpha: float = 1.0,
             beta: float = 0.0, bias: np.ndarray | None = None, threads: int | None = None,
             force_threads: bool = False) -> np.ndarray:
        """c := alpha * a @ b + bias + beta * c on 2-D arrays of this kernel's dtype, in place.

        Any strides work, transposed and negative ones included, so a transposed operand is just a
        transposed view. `bias` (length n) is added to every row in the kernel's epilogue. With
        beta == 0, c is not read. `threads` is a maximum (small GEMMs use fewer) unless
        `force_threads`.
        """
        for name, x in (("a", a), ("b", b), ("c", c)):
            if not isinstance(x, np.ndarray) or x.ndim != 2:
                raise ValueError(f"gemm: {name} must be a 2-D numpy array")
            accepted = (self.dtype,) if name == "c" else self.input_dtypes
            if x.dtype.newbyteorder("=") not in accepted:
                raise TypeError(f"gemm: this {self.params.dtype} kernel takes {name} as "
                                f"{' or '.join(map(str, accepted))}, not {x.dtype}")
        (m, k), (k2, n) = a.shape, b.shape
        if k != k2 or c.shape != (m, n):
            raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {c.shape} do not match")
        if not c.flags.writeable:
            raise ValueError("gemm: output array is read-only")
        bias_pointer = self._ffi.NULL
        if bias is not None:
            bias = np.ascontiguousarray(bias, dtype=self.dtype)
            if bias.shape != (n,):
                raise ValueError(f"gemm: bias has shape {bias.shape}; expected ({n},)")
            bias_pointer = self._pointer(bias)
        nthreads = resolve_threads(threads, self.default_threads)
        target = c
        if (_element_strides(c) is None or not c.dtype.isnative or np.may_share_memory(c, a)
                or np.may_share_memory(c, b)):
            target = np.array(c, dtype=self.dtype.newbyteorder("="), order="C") if beta else np.empty((m, n), self.dtype)
        if force_threads or not self._widened(a, b, target, alpha, beta, bias, nthreads):
            a, b = self._usable(a), self._usable(b)
            if self.paired and not force_threads:
                a, b = self._rounded_ahead(a, b, nthreads, bias is not None)
            self._run(a, b, target, alpha, beta, bias_pointer, -nthreads if force_threads else nthreads)
        if target is not c:
            c[...] = target
        return c

    def _widened(self, a, b, c, alpha, beta, bias, nthreads: int) -> bool:
        """c := alpha * a @ b + bias + beta * c by a float32 kernel on its bfloat16 operand as it is,
        widened as loaded, where that operand is W: on the dot path (x @ W.T, W @ x for a column x, and
        without a bias W @ X for a few columns, as C^T = X^T @ W.T with X^T copied) where the float32
        product of those strides would take it, and for a few rows of x times a
        row-major W (x @ W) on rows_direct_w16. False (nothing done) elsewhere, where the bfloat16
        operand is copied to float32 first. Either way numpy's float32 product."""
        if self._w16 is None or {a.dtype, b.dtype} != {_FLOAT32, _BFLOAT16}:
            return False
        (m, k), n = a.shape, b.shape[1]
        a_strides, b_strides, c_strides = _element_strides(a), _element_strides(b), _element_strides(c)
        if None in (a_strides, b_strides, c_strides) or not m or not n or not k:
            return False
        (rsa, csa), (rsb, csb), (rsc, csc) = a_strides, b_strides, c_strides
        bias_pointer = self._pointer(bias) if bias is not None else self._ffi.NULL
        if a.dtype == _FLOAT32 and csb == 1 and n > 1:  # x @ W, unless more rows than rows_direct_w16 takes
            status = self._w16_rows(m, n, k, alpha, self._pointer(a), rsa, csa, self._pointer(b), rsb, beta,
                                    self._pointer(c), rsc, csc, bias_pointer, nthreads)
            if status < 0:
                raise MemoryError(f"autogemm: cannot allocate a workspace for {m}x{n}x{k}")
            if status == 0:
                return True
        if self.path(m, n, k, a_strides, b_strides, c_strides, threads=nthreads, bias=bias is not None) != "dot":
            return False
        if a.dtype == _FLOAT32 and (csa == 1 or k == 1) and (rsb == 1 or k == 1) and n > 1:  # x @ W.T
            self._w16(m, n, k, alpha, self._pointer(a), rsa, self._pointer(b), csb, beta, self._pointer(c), rsc, csc,
                      bias_pointer, 1, nthreads)
            return True
        if a.dtype == _BFLOAT16 and n == 1 and (csa == 1 or k == 1) and (rsb == 1 or k == 1):  # W @ x
            self._w16(1, m, k, alpha, self._pointer(b), 0, self._pointer(a), rsa, beta, self._pointer(c), 0, rsc,
                      bias_pointer, 0, nthreads)
            return True
        if a.dtype == _BFLOAT16 and n > 1 and (csa == 1 or k == 1) and bias is None:  # W @ X: C^T = X^T @ W.T
            xt = np.ascontiguousarray(b.T)  # X's few columns as rows along k
            self._w16(n, m, k, alpha, self._pointer(xt), k, self._pointer(a), rsa, beta, self._pointer(c), csc, rsc,
                      self._ffi.NULL, 1, nthreads)
            return True
        return False

    def _rounded_ahead(self, a, b, nthreads: int, bias: bool) -> tuple[np.ndarray, np.ndarray]:
        """A bfloat16 kernel's float32 operand beside a bfloat16 one with eight times its values or more
        (x beside W), rounded to bfloat16 before the call, as packing would round it, where two bfloat16
        operands skip packing (rows_direct or the dot path): else W is packed for a few rows of x."""
        if {a.dtype, b.dtype} != {_FLOAT32, _BFLOAT16}:
            return a, b
        small, large = (a, b) if a.dtype == _FLOAT32 else (b, a)
        if not small.size or small.size * 8 > large.size:
            return a, b
        rounded = np.empty_like(small, dtype=_BFLOAT16)  # small's order of axes
        ra, rb = (rounded, b) if small is a else (a, rounded)
        (m, k), n = a.shape, b.shape[1]
        if self.path(m, n, k, _element_strides(ra), _element_strides(rb), threads=nthreads, bias=bias) == "packed":
            return a, b
        np.copyto(rounded, small, casting="unsafe")
        return ra, rb

    def _run(self, a, b, c, alpha, beta, bias_pointer, nthreads: int) -> None:
        """The C call on checked arrays: a and b readable in place (whole-element strides), c writable
        and apart from both."""
        (m, k), n = a.shape, b.shape[1]
        (rsa, csa), size = a.strides, a.itemsize
        (rsb, csb), (rsc, csc) = b.strides, c.strides
        rsa, csa, rsb, csb = rsa // size, csa // size, rsb // b.itemsize, csb // b.itemsize
        rsc, csc = rsc // c.itemsize, csc // c.itemsize
        extra = ((A_FLOAT32 if a.dtype == _FLOAT32 else 0) | (B_FLOAT32 if b.dtype == _FLOAT32 else 0),) \
            if self.paired else ()
        if self._strided(m, n, k, alpha, self._pointer(a), rsa, csa, self._pointer(b), rsb, csb, beta,
                         self._pointer(c), rsc, csc, bias_pointer, nthreads, *extra) != 0:
            raise MemoryError(f"autogemm: cannot allocate packing buffers for {m}x{n}x{k}")

    def product(self, a: np.ndarray, b: np.ndarray, threads: int | None = None) -> np.ndarray:
        """A new a @ b for 2-D arrays of matching inner size that this kernel reads (see
        `input_dtypes`): the short path that `autogemm.matmul` takes for plain 2-D operands."""
        a, b = self._usable(a), self._usable(b)
        c = np.empty((a.shape[0], b.shape[1]), self.dtype)
        self._run(a, b, c, 1.0, 0.0, self._ffi.NULL, resolve_threads(threads, self.default_threads))
        return c

    def __call__(self, a, b, out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
        """`numpy.matmul(a, b, out=out)` for this kernel's dtype, 1-D and stacked operands included."""
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul: Input operand does not have enough dimensions")
        if computed_dtype(a, b) != self.params.dtype and not self.paired:
            raise TypeError(f"this kernel computes {self.dtype}; inputs are {a.dtype} and {b.dtype}")
        a2, b2 = (a[np.newaxis, :] if a.ndim == 1 else a), (b[:, np.newaxis] if b.ndim == 1 else b)
        a2, b2 = self.as_input(a2), self.as_input(b2)
        if a2.shape[-1] != b2.shape[-2]:
            raise ValueError(
                f"matmul: Input operand 1 has a mismatch in its core dimension 0, with gufunc signature "
                f"(n?,k),(k,m?)->(n?,m?) (size {b2.shape[-2]} is different from {a2.shape[-1]})"
            )
        try:
            batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        except ValueError:
            raise ValueError(f"matmul: batch dimensions of {a.shape} and {b.shape} do not broadcast") from None
        m, n = a2.shape[-2], b2.shape[-1]
        shape = batch + ((m,) if a.ndim > 1 else ()) + ((n,) if b.ndim > 1 else ())
        if out is None:
            out = np.empty(shape, self.dtype)
        else:
            if not isinstance(out, np.ndarray):
                raise TypeError("out must be a numpy array")
            if out.shape != shape:
                raise ValueError(f"out has shape {out.shape}; matmul of {a.shape} and {b.shape} gives {shape}")
            if out.dtype != self.dtype:
                raise TypeError(f"out has dtype {out.dtype}; this matmul produces {self.dtype}")
        if not batch and a.ndim == 2 and b.ndim == 2:  # the common case: one GEMM
            return self.gemm(a2, b2, out, threads=threads)
        out2 = out
        if a.ndim == 1:
            out2 = out2[..., np.newaxis, :] if b.ndim > 1 else out2[..., np.newaxis]
        if b.ndim == 1:
            out2 = out2[..., np.newaxis]
        if b2.ndim == 2 and batch:  # a stack times one matrix: one GEMM of all the stack's rows, where they are a view
            a_rows, out_rows = _stacked_rows(a2), _stacked_rows(out2)
            if a_rows is not None and out_rows is not None:
                self.gemm(a_rows, b2, out_rows, threads=threads)
                return out
        if batch:  # a stacked product copies a bfloat16 operand to float32 once, not once per GEMM
            a2, b2 = (x if x.dtype in self._in_place else x.astype(self._in_place[-1]) for x in (a2, b2))
        a_full = np.broadcast_to(a2, batch + a2.shape[-2:])
        b_full = np.broadcast_to(b2, batch + b2.shape[-2:])
        for index in np.ndindex(*batch):
            self.gemm(a_full[index], b_full[index], out2[index], threads=threads)
        return out

    def path(self, m: int, n: int, k: int, a_strides: tuple[int, int] | None = None,
             b_strides: tuple[int, int] | None = None, c_strides: tuple[int, int] | None = None,
             threads: int = 1, bias: bool = False) -> str:
        """How an m x n x k GEMM with these element strides (row-major by default), with a bias or
        not, is computed on `threads` threads, unless its thread count is forced: "packed"; "direct",
        without packing A (a transposed B packed a panel at a time), where packing cannot pay for
        itself; or "dot", dot products along k, for a matrix times a column or a few rows times a
        transposed matrix; followed by " of C^T" where the kernel computes C^T = B^T A^T instead (a
        narrow or column-major C), and by " + dot on the last P columns" where those columns, past the
        last whole vector, take the dot path, or " + direct of C^T on the last P columns" where they
        are computed as their C^T on the direct path. A bfloat16 kernel packs, or where both operands
        are bfloat16 (not float32 ones, which packing rounds) takes the dot path, or "direct" for a
        few rows times a row-major B (rows_direct, B paired or widened as loaded); this says how it
        computes bfloat16 operands."""
        rsa, csa = a_strides or (k, 1)
        rsb, csb = b_strides or (n, 1)
        rsc, csc = c_strides or (n, 1)
        code = self._path(m, n, k, rsa, csa, rsb, csb, rsc, csc, bias, threads)
        peel = code >> 5
        return (("packed", "direct", "dot", "dot", "dot", "direct")[code & 7] + (" of C^T" if code & 8 else "")
                + (f" + {'direct of C^T' if code & 16 else 'dot'} on the last {peel} column{'s' if peel > 1 else ''}"
                   if peel else ""))

    def threads_used(self, m: int, n: int, k: int, threads: int) -> int:
        """The threads an m x n x k GEMM takes when `threads` are offered: one a Mflop of work, or
        a 256 KiB of A and B, at most `threads`."""
        return getattr(self._lib, f"autogemm_{BLAS_LETTER[self.params.dtype]}gemm_threads")(m, n, k, threads)

    def phase_seconds(self) -> dict[str, float]:
        """Seconds spent packing B, packing A and in macro-kernels since the last reading, summed over
        the threads (a build made with `api.build(params, phases=True)` only)."""
        try:
            read = getattr(self._lib, f"autogemm_{BLAS_LETTER[self.params.dtype]}gemm_phases")
        except AttributeError:
            raise RuntimeError(f"{self.params.name} is not a profiling build: "
                               "build it with autogemm.api.build(params, phases=True)") from None
        seconds = np.zeros(len(PHASES), np.float64)
        read(self._pointer(seconds))
        return dict(zip(PHASES, map(float, seconds)))

    def bench(self, a: np.ndarray, b: np.ndarray, *, threads: int, warmup: int = 1, reps: int = 5,
              trans_a: bool = False, trans_b: bool = False, beta: float = 0.0,
              c: np.ndarray | None = None, bias: np.ndarray | None = None,
              force_threads: bool = False) -> np.ndarray:
        """Seconds of each of `reps` timed calls of c = op(a) @ op(b) + bias + beta * c, timed inside C
        after `warmup` calls. `a` and `b` are the stored (row-major) operands: a is k x m when trans_a.
        `force_threads` runs exactly `threads` threads on the packed path, however small the GEMM."""
        a = np.ascontiguousarray(a, self.input_dtypes[0])
        b = np.ascontiguousarray(b, self.input_dtypes[0])
        m, k = a.shape[::-1] if trans_a else a.shape
        n = b.shape[0] if trans_b else b.shape[1]
        if c is None:
            c = np.zeros((m, n), self.dtype)
        if c.shape != (m, n) or c.dtype != self.dtype or not c.flags.c_contiguous:
            raise ValueError("bench: c must be a C-contiguous m x n array of the kernel's dtype")
        if bias is not None:
            bias = np.ascontiguousarray(bias, self.dtype)
            if bias.shape != (n,):
                raise ValueError(f"bench: bias must have shape ({n},)")
        seconds = np.zeros(reps, np.float64)
        status = self._bench(int(trans_a), int(trans_b), m, n, k, self._pointer(a), self._pointer(b), beta,
                             self._pointer(c), self._pointer(bias) if bias is not None else self._ffi.NULL,
                             -resolve_threads(threads) if force_threads else resolve_threads(threads), warmup, reps,
                             self._pointer(seconds))
        if status != 0:
            raise MemoryError(f"autogemm: cannot allocate packing buffers for {m}x{n}x{k}")
        return seconds
