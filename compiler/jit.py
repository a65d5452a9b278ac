"""From loop IR to a callable kernel: LLVM optimization, JIT, the disk cache, and
the argument checks that stand between Python and native code."""
from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import logging
import os
import pathlib
import sys
import tempfile
import threading
import time

import numpy as np

import llvmlite
import llvmlite.binding as llvm

from autograph.errors import BackendError, InputError
from autograph.graph import Graph

from . import spin
from . import codegen
from .codegen import ARRAY_DATA_FIELD, dots_apply, dots_pair, emit_text, may_split
from .loopir import Loop, MatMul, Program, fingerprint, walk

log = logging.getLogger("autograph.compiler")

OPT_LEVEL = 3
# The optimization pipeline's switches (part of the cache key: they change the code).
PIPELINE = dict(loop_vectorization=True, slp_vectorization=True, loop_unrolling=False,
                loop_interleaving=False)
CACHE_FORMAT = b"AGKERNEL2\n"   # 2: arguments are array objects
# Loop strength reduction in the code generator of kernels (the product-kernel library,
# built once, keeps it): without it an LSTM step compiles ~10–15% faster (LSR was 11% of
# LLVM's time) and runs within noise. A process-wide LLVM option, set around each emit.
KERNEL_LSR = False
_lock = threading.RLock()
_target = None
_keep: list = []


def target_machine():
    """The host's target machine (CPU name and features), made once per process."""
    global _target
    with _lock:
        if _target is None:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            cpu, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
            _target = (_new_target_machine(cpu, features), cpu, features,
                       llvm.get_process_triple())
    return _target


def _new_target_machine(cpu=None, features=None):
    if cpu is None:
        _, cpu, features, _ = target_machine()
    return llvm.Target.from_default_triple().create_target_machine(
        cpu=cpu, features=features, opt=OPT_LEVEL, codemodel="jitdefault")


def optimize(ir_text: str):
    """Parse, verify and optimize a module with the new pass manager at OPT_LEVEL."""
    mod = llvm.parse_assembly(ir_text)
    mod.verify()
    mod.triple = llvm.get_process_triple()
    mod.data_layout = str(target_machine()[0].target_data)
    with _lock:
        # A fresh pass builder per module: it is cheap, and builders are not shared
        # between threads. Its tuning options must outlive it, so both are kept here.
        pto = llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL)
        # No unrolling halves compile time; no interleaving cuts another third of the
        # code to optimize and emit; the run time of the kernels stays within noise.
        for name, value in PIPELINE.items():
            setattr(pto, name, value)
        pb = llvm.create_pass_builder(target_machine()[0], pto)
        mpm = pb.getModulePassManager()
        mpm.run(mod, pb)
        _keep.append((pto, pb, mpm))
        del _keep[:-1]
    return mod


def emit(mod, lsr: bool = True) -> bytes:
    """Object code for an optimized module, loop strength reduction on or off (LLVM's
    `-disable-lsr`, a process-wide option: set here under the lock, for this emit)."""
    with _lock:
        llvm.set_option("autograph", "-disable-lsr=" + ("false" if lsr else "true"))
        return target_machine()[0].emit_object(mod)


# ----------------------------------------------------------------------------- disk cache

def _private_dir(variable: str, leaf: str) -> pathlib.Path:
    """$`variable`, else `autograph/<leaf>` in the user's cache directory ($XDG_CACHE_HOME
    or ~/.cache), created private to the user (mode 0700)."""
    root = os.environ.get(variable)
    if root:
        path = pathlib.Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
        path = pathlib.Path(base) / "autograph" / leaf
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def cache_dir() -> pathlib.Path:
    """Where compiled kernels are kept: $AUTOGRAPH_CACHE_DIR, else the user's cache
    directory. Created private to the user (mode 0700)."""
    return _private_dir("AUTOGRAPH_CACHE_DIR", "kernels")


@functools.lru_cache(maxsize=None)
def _compiler_digest() -> str:
    """A digest of the compiler's own source: a kernel cached by an older code
    generator is never loaded by a newer one."""
    h = hashlib.sha256()
    for path in sorted(pathlib.Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def cache_key(program_digest: str) -> str:
    """Hash of everything the object code depends on: the program (`fingerprint`),
    the code generator and its switches, LLVM, the target CPU."""
    from autograph import __version__
    from . import blas, codegen, copies, fuse, lower, microkernels, rewrite, vecmath
    tm, cpu, features, triple = target_machine()
    h = hashlib.sha256()
    for part in (program_digest, _compiler_digest(), ".".join(map(str, llvm.llvm_version_info)),
                 llvmlite.__version__, triple, cpu, features, str(OPT_LEVEL),
                 repr(sorted(PIPELINE.items())), repr(blas.available()),
                 str(blas.BLAS_MIN_WORK), str(codegen.TOP_TILES_MAX_WORK),
                 str(codegen.TILES_IN_SHARDS), str(lower.PACK_FOR_TILES), str(lower.INPLACE),
                 str(lower.HISTORY_IN_STACK), repr(sorted(rewrite.RECOMPUTED)),
                 repr(vecmath.isa()), repr(vecmath.has("expm1", "float64")),
                 str(codegen.TANH_BY_EXPM1), str(codegen.INLINE_EXP), str(codegen.ARRAY_DATA_FIELD),
                 str(codegen.LINE_BYTES), str(codegen.TILED_COPY_BYTES),
                 str(codegen.THIN_MAX_K), str(codegen.THIN_MAX_OUT), str(codegen.UNIT_SPLIT),
                 str(codegen.UNIT_SPLIT_BYTES), str(codegen.UNIT_SPLIT_MAX_BYTES),
                 str(codegen.UNIT_SPLIT_SHARE), str(codegen.PROFILE), str(copies.FOLD), str(fuse.FUSE_SUMS),
                 str(microkernels.PAR_SPLIT_BYTES),
                 str(codegen.REDUCE_IN_REGISTERS), str(KERNEL_LSR),
                 str(microkernels.ROWS_STREAM_BYTES), str(rewrite.TRANSPOSED_PRODUCT_BYTES),
                 repr([name for name, _ in rewrite.PASSES]),
                 __version__,
                 CACHE_FORMAT.decode()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def library_dir() -> pathlib.Path:
    """Where the product kernels (`microkernels`) are kept, apart from the kernels:
    $AUTOGRAPH_LIBRARY_DIR, else `autograph/library` in the user's cache directory —
    not under $AUTOGRAPH_CACHE_DIR, so a new kernel cache (a test's, a CI job's, one
    cleared to time a cold compile) does not build them again: they are a per-machine
    library, built once (`autograph library`, run by the README's install command, or
    the first time a kernel calls one), like a BLAS built for its host. Where that
    directory cannot be made, the kernel cache serves."""
    try:
        return _private_dir("AUTOGRAPH_LIBRARY_DIR", "library")
    except OSError as e:
        log.warning("product-kernel directory unusable (%s); using the kernel cache; set "
                    "AUTOGRAPH_LIBRARY_DIR to a writable directory", e)
        return cache_dir()


def _entry(key: str, prefix: str, directory: pathlib.Path | None = None) -> pathlib.Path:
    return (directory or cache_dir()) / f"{prefix}{key}.o"


def cache_load(key: str, prefix: str = "", directory: pathlib.Path | None = None) -> bytes | None:
    """The object code stored under `key` (in `directory`, else the kernel cache), or
    None. A corrupt, truncated or foreign entry is logged, removed and ignored. Kernels
    are stored as `<key>.o`, product kernels as `library-<key>.o` (in `library_dir`)."""
    path = _entry(key, prefix, directory)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        log.info("kernel cache miss %s", key[:16])
        return None
    except OSError as e:
        log.warning("kernel cache entry %s unreadable (%s); rebuilding", path, e)
        return None
    head = len(CACHE_FORMAT)
    ok = (data.startswith(CACHE_FORMAT) and len(data) >= head + 72
          and data[head:head + 32] == bytes.fromhex(key))
    if ok:
        digest, size = data[head + 32:head + 64], int.from_bytes(data[head + 64:head + 72], "little")
        payload = data[head + 72:]
        ok = len(payload) == size and hashlib.sha256(payload).digest() == digest
    if not ok:
        log.warning("kernel cache entry %s is corrupt or foreign; ignoring and rebuilding", path)
        try:
            path.unlink()
        except OSError:
            pass
        return None
    log.info("kernel cache hit %s", key[:16])
    return payload


def cache_store(key: str, payload: bytes, prefix: str = "",
                directory: pathlib.Path | None = None) -> None:
    """Write an entry atomically (a temp file in the same directory, then rename)."""
    d = directory or cache_dir()
    blob = (CACHE_FORMAT + bytes.fromhex(key) + hashlib.sha256(payload).digest()
            + len(payload).to_bytes(8, "little") + payload)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".o")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _entry(key, prefix, d))
    except OSError as e:
        log.warning("could not write kernel cache entry: %s", e)
        try:
            os.unlink(tmp)
        except OSError:
            pass


# ----------------------------------------------------------------------------- kernels

_KERNEL_T = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 6)
_PACKED_T = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
# Plain calls that repeat the last one (`Kernel.repeat`) of a kernel without loops (one
# step of a cell) hand half of their large single-row products to the worker, as bound
# calls do: a B = 1 LSTM step float64 32.6 -> 26.2 µs. Training steps (loops) do not:
# with the worker their repeated plain calls ran 0.90-1.00x (B = 1, D = H = 512 and
# B = 1, H = 1024; measured in one process).
REPEAT_WITH_WORKER = True
_library: dict = {}          # (kind, dtype) -> object code of that product kernel
LIBRARY_PREFIX = "library-"
library_seconds = 0.0       # what building product kernels took in this process (0: cache)


def library_key(kind: str, dtype: str) -> str:
    return cache_key(f"microkernel {kind} {dtype}")


def library_object(kind: str, dtype: str, rebuild: bool = False) -> bytes:
    """The object code of one product kernel (`microkernels`) for one dtype: built the
    first time a kernel calls it (once per host and compiler version: stored as
    `library-<key>.o` in `library_dir`), then kept for the process; `rebuild` builds it
    again whatever is stored."""
    global library_seconds
    with _lock:
        obj = None if rebuild else _library.get((kind, dtype))
        if obj is None:
            from .microkernels import unit_ir
            key, where = library_key(kind, dtype), library_dir()
            obj = None if rebuild else cache_load(key, LIBRARY_PREFIX, where)
            if obj is None:
                t0 = time.perf_counter()
                obj = emit(optimize(unit_ir(kind, dtype)), lsr=True)
                library_seconds += time.perf_counter() - t0
                cache_store(key, obj, LIBRARY_PREFIX, where)
            _library[kind, dtype] = obj
        return obj


def library_objects(obj: bytes) -> list:
    """The object code of every product kernel that the object `obj` calls (and of the
    ones those call), to load next to it."""
    from .microkernels import called_by
    return [library_object(kind, dtype) for kind, dtype in called_by(obj)]


def jit(prog: Program, use_cache: bool = True, obj: bytes | None = None):
    """(engine, function address, seconds spent in code generation and in LLVM,
    whether the cache answered, the object code). The LLVM IR is generated only on a
    cache miss; `obj`, when given, is the program's object code (a graph-level hit)."""
    t0 = time.perf_counter()
    given = obj is not None
    key = cache_key(fingerprint(prog)) if use_cache and not given else None
    if key is not None:
        obj = cache_load(key)
    hit = obj is not None
    codegen = 0.0
    if obj is None:
        t1 = time.perf_counter()
        ir_text = emit_text(prog)
        codegen = time.perf_counter() - t1
        obj = emit(optimize(ir_text), lsr=KERNEL_LSR)
        if key is not None:
            cache_store(key, obj)
    seconds = time.perf_counter() - t0 - codegen
    # the product kernels it calls: built outside the kernel's compile time, the first
    # time a kernel calls them (then from the cache)
    library = library_objects(obj)
    # An execution engine owns (and frees) its target machine: give it its own.
    t1 = time.perf_counter()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _new_target_machine())
    for part in library:
        engine.add_object_file(llvm.ObjectFileRef.from_data(part))
    engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
    engine.finalize_object()
    addr = engine.get_function_address("kernel")
    packed = engine.get_function_address("kernel_packed")
    if not (addr and packed):
        raise BackendError("the compiled object has no kernel function")
    seconds += time.perf_counter() - t1
    return engine, (addr, packed), codegen, seconds, hit, obj


def _slow_data_ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _native_headers() -> bool:
    """Whether an ndarray object keeps its data pointer at `ARRAY_DATA_FIELD`, right
    after the object header, as NumPy's public `PyArrayObject_fields` lays it out.
    Checked here on arrays, views and offsets. Kernels read each argument's data
    pointer there (`codegen.build`), so a call passes `id(a)` (0.05 µs an array here)
    instead of reading the pointer in Python (0.5–0.6 µs through ctypes, 1.2 µs
    through `__array_interface__`)."""
    field = ctypes.c_void_p.from_address
    probes = [np.empty(3), np.zeros((4, 5), np.float32)[1:, 2:], np.arange(7)[::2]]
    return all(field(id(a) + ARRAY_DATA_FIELD).value == _slow_data_ptr(a) for a in probes)


NATIVE_HEADERS = _native_headers()
_HEADER_WORDS = ARRAY_DATA_FIELD // 8 + 1


def _data_ptr(a: np.ndarray) -> int:
    if NATIVE_HEADERS:
        return ctypes.c_void_p.from_address(id(a) + ARRAY_DATA_FIELD).value
    return _slow_data_ptr(a)


def handles(arrays, keep: list) -> list:
    """What a kernel takes for each array: the array object itself (`id`), or, where
    NumPy lays its objects out otherwise, a stand-in header with the data pointer at
    ARRAY_DATA_FIELD (appended to `keep`, which the caller holds during the call)."""
    if NATIVE_HEADERS:
        return list(map(id, arrays))
    out = []
    for a in arrays:
        head = (ctypes.c_void_p * _HEADER_WORDS)()
        head[-1] = _slow_data_ptr(a)
        keep.append(head)
        out.append(ctypes.addressof(head))
    return out


# Output arrays of at least this many bytes are taken back from an earlier call's
# outputs that nothing else holds any more (`Outputs`): a fresh large array is memory
# the allocator maps anew (glibc's mmap above its threshold), and the kernel then
# pays a page fault for every 4 KB of it (an Elman step with three 2 MB float64
# weight gradients, B = 1, T = 8, D = H = 512: ~2900 faults a call, 8.5-10.4 ms a call
# against 6.4-7.5 ms without them).
REUSE_OUTPUT_BYTES = 1 << 17
REUSE_GENERATIONS = 2      # the last two calls' outputs: a training loop still holds
                           # the last call's gradients while it makes the next call


def _refs(seq, j) -> int:
    return sys.getrefcount(seq[j])


_UNSHARED = _refs([np.empty(0)], 0)   # an array that only the list holds
_FREE = list(map(sys.getrefcount, [np.empty(0)]))[0]     # the same, counted through map


class Outputs:
    """The output arrays of one thread's calls of a binding: new ones (`np.empty`), or,
    for those of REUSE_OUTPUT_BYTES or more, one from the last REUSE_GENERATIONS calls
    that nothing but this pool references — the caller has dropped it and every view
    of it (a view holds its base) — so its pages are mapped already. An output that
    the caller keeps, passes back in as an input, or holds a view of, is never
    reused while it does. Costs no memory at the peak of a call (the array reused is
    one the caller dropped); between calls it keeps up to one more set of them
    alive, as the arena is kept.

    When every output is small, a whole earlier set is taken back when nothing else
    holds any of its arrays (one reference count each, in C: `np.empty` costs ~0.5 µs
    an array here, a tiny training step has 7 to 10 outputs), and `same` tells that
    they are the very arrays of the last call (whose handles the caller's table holds
    already)."""
    __slots__ = ("specs", "reuse", "spare", "new", "free", "same")

    def __init__(self, specs):
        self.specs = specs
        self.reuse = [int(np.prod(shape)) * np.dtype(dtype).itemsize >= REUSE_OUTPUT_BYTES
                      for shape, dtype in specs]
        self.spare: list = []        # earlier calls' outputs, newest first
        self.free = [_FREE] * len(specs)
        self.same = False            # new() returned the last call's arrays
        # new(): a call's output arrays
        self.new = self._taken_back if any(self.reuse) else self._small

    def _small(self) -> list:
        spare = self.spare
        for i, gen in enumerate(spare):
            if list(map(sys.getrefcount, gen)) == self.free:
                self.same = i == 0
                if i:
                    self.spare = [gen] + spare[:i] + spare[i + 1:]
                return list(gen)
        outs = list(itertools.starmap(np.empty, self.specs))
        self.same = False
        self.spare = [list(outs)] + spare[:REUSE_GENERATIONS - 1]
        return outs

    def _taken_back(self) -> list:
        self.same = False
        outs = []
        for j, spec in enumerate(self.specs):
            a = None
            if self.reuse[j]:
                for gen in self.spare:
                    if gen[j] is not None and _refs(gen, j) == _UNSHARED:
                        a, gen[j] = gen[j], None
                        break
            outs.append(np.empty(*spec) if a is None else a)
        self.spare = [list(outs)] + self.spare[:REUSE_GENERATIONS - 1]
        return outs


class Scratch:
    """One thread's memory for a kernel's calls: the arena (kept between calls: a fresh
    one would pay the page faults of every temporary again), the argument tables, the
    status words, the layout of the last binding and its outputs (`Outputs`)."""
    __slots__ = ("status", "ins", "ous", "last", "arena", "keep", "key", "layout", "args",
                 "outputs")

    def __init__(self):
        self.arena = self.key = self.layout = self.args = self.outputs = None


class Kernel:
    """A compiled graph. Calling it checks every argument (dtype, shape, symbolic-dim
    bindings, contiguity, alignment) before native code runs, so a bad argument is a
    Python exception that names it."""

    def __init__(self, graph: Graph, prog: Program, use_cache: bool = True,
                 obj: bytes | None = None):
        self.graph, self.prog = graph, prog
        (self.engine, (addr, packed), self.codegen_seconds, self.compile_seconds,
         self.cache_hit, self.object_code) = jit(prog, use_cache, obj)
        self._fn = _KERNEL_T(addr)   # the engine stays alive as long as this kernel
        self._packed = _PACKED_T(packed)      # the same on a table of its six arguments
        self.address = addr
        self._layouts: dict = {}
        self._local = threading.local()       # .scratch: this thread's `Scratch`
        self.names = [x.name for x in graph.inputs]
        # products that may split their columns with a worker (`microkernels.par_dots`),
        # or a step that splits its hidden units with it (`codegen.unit_plan`)
        stmts = list(walk(prog.body))
        self.parallel = any(isinstance(s, MatMul) and dots_apply(s) and may_split(s)
                            for s in stmts) or any(dots_pair(a, b)
                                                   for a, b in zip(stmts, stmts[1:])) \
            or (codegen.UNIT_SPLIT and codegen.unit_plan(prog.body) is not None)
        self.loops = any(isinstance(s, Loop) for s in prog.body)

    @functools.cached_property
    def ir_text(self) -> str:
        """The kernel's LLVM IR (generated again when it came from the cache)."""
        return emit_text(self.prog)

    # ----------------------------------------------------------------- checks

    def check_args(self, arrays) -> dict:
        """The dim binding of `arrays`, after checking each one strictly."""
        if len(arrays) != len(self.graph.inputs):
            raise InputError(f"the kernel takes {len(self.graph.inputs)} arrays "
                             f"({', '.join(self.names)}), got {len(arrays)}")
        dims: dict = {}
        for x, a in zip(self.graph.inputs, arrays):
            if not isinstance(a, np.ndarray):
                raise InputError(f"input {x.name!r}: expected a NumPy array, got {type(a).__name__}")
            if a.dtype != np.dtype(x.dtype):
                raise InputError(f"input {x.name!r} expects dtype {x.dtype}, got {a.dtype.name}")
            if a.ndim != len(x.shape):
                raise InputError(f"input {x.name!r} expects {len(x.shape)} dims "
                                 f"{list(x.shape)}, got shape {a.shape}")
            for axis, (d, n) in enumerate(zip(x.shape, a.shape)):
                if isinstance(d, int) and d != n:
                    raise InputError(f"input {x.name!r} expects size {d} on axis {axis}, "
                                     f"got shape {a.shape}")
                if isinstance(d, str):
                    if dims.setdefault(d, n) != n:
                        raise InputError(f"input {x.name!r} has {d}={n} on axis {axis}, but an "
                                         f"earlier input bound {d}={dims[d]}")
            if not a.flags.c_contiguous or not a.flags.aligned:
                raise InputError(f"input {x.name!r} is not a C-contiguous aligned array; "
                                 "pass np.ascontiguousarray(...)")
        return dims

    def check_dims(self, dims: dict) -> None:
        for d in self.prog.dims:
            if d not in dims:
                raise InputError(f"symbolic dim {d!r} is not bound; pass an input that has it")
        for c in self.prog.constraints:
            kind = c[0]
            if kind == "eq" and dims[c[1]] != c[2]:
                raise InputError(c[3].format(value=dims[c[1]]))
            if kind == "range":
                n = dims[c[1]]
                if not -n <= c[2] < n:
                    raise InputError(c[3].format(value=n))
            if kind == "nonempty" and c[1].evaluate(dims) < 1:
                raise InputError(c[2])

    # ----------------------------------------------------------------- calls

    def __call__(self, *arrays):
        """Run on NumPy arrays (exact dtypes, C-contiguous); returns a list of arrays."""
        dims = self.check_args(arrays)
        return self.run(list(arrays), dims)

    def _binding(self, dims) -> tuple:
        """The values of the program's dims: what a layout is kept under."""
        return tuple(map(dims.get, self.prog.dims))

    def _layout(self, dims) -> "_Layout":
        """Everything a call at this binding of B, T, … needs that does not depend on
        the arrays' contents: arena size and slot offsets, the dims, output specs."""
        prog = self.prog
        key = self._binding(dims)
        layout = self._layouts.get(key)
        if layout is None:
            self.check_dims(dims)
            nbytes, offsets = prog.arena_layout(dims)
            offsets = np.array(offsets or [0], dtype=np.int64)
            dim_arr = np.array([dims[d] for d in prog.dims] or [0], dtype=np.int64)
            outs = [(tuple(e.evaluate(dims) for e in s), np.dtype(b.dtype))
                    for s, b in zip(prog.out_shapes, prog.outputs)]
            layout = self._layouts[key] = _Layout(max(nbytes, 64), offsets, dim_arr, outs)
        return layout

    def _raise(self, status) -> None:
        """The error a kernel reported through its status word (and clear it)."""
        code, value = status[0], status[1]
        status[0] = 0
        message = self.prog.errors[code // 1000][code % 1000]
        raise InputError(message.format(value=int(value)))

    def run(self, arrays, dims, scratch=None):
        """Run on arrays already checked against the graph (`autograph.function`)."""
        args, outs, status = self.prepare(arrays, dims, scratch)
        self._fn(*args)      # one thread: the worker pays off in bound calls only (`bind`)
        if status[0]:
            self._raise(status)
        return outs

    def prepare(self, arrays, dims, scratch: Scratch | None = None):
        """(the six native arguments, the output arrays, the status word) of a call on
        `arrays`, using `scratch` (this thread's by default) for the arena and the
        argument tables: the raw call a sharded run hands to another thread."""
        sc = scratch or getattr(self._local, "scratch", None) or self._new_scratch()
        if sc.key is None:
            sc.status = (ctypes.c_int64 * 3)()    # code, value, worker words (0)
            sc.ins = (ctypes.c_void_p * max(len(arrays), 1))()
            sc.last = [None] * len(arrays)   # the arrays whose handles `ins` holds
            sc.ous = (ctypes.c_void_p * max(len(self.prog.outputs), 1))()
            sc.keep = []
        key = self._binding(dims)
        if key != sc.key:
            layout = sc.layout = self._layout(dims)
            if sc.arena is None or sc.arena.size < layout.nbytes:
                sc.arena = _arena(layout.nbytes)
            sc.key = key
            sc.outputs = Outputs(layout.outs)
            sc.args = (layout.dims_ptr, ctypes.addressof(sc.ins), ctypes.addressof(sc.ous),
                       _data_ptr(sc.arena), layout.offsets_ptr, ctypes.addressof(sc.status))
        ins, last = sc.ins, sc.last
        if not NATIVE_HEADERS:
            sc.keep = []
            last[:] = [None] * len(last)
        for i, a in enumerate(arrays):
            if a is not last[i]:        # parameters are the same arrays call after call
                if not (a.flags.c_contiguous and a.flags.aligned):
                    a = np.ascontiguousarray(a)
                ins[i] = handles((a,), sc.keep)[0]
                last[i] = a             # (held, so the address stays theirs)
        # each output its own array (a caller may keep one and drop the others): new,
        # or a large one that an earlier call returned and nothing holds any more
        outs = sc.outputs.new()
        sc.ous[:len(outs)] = handles(outs, sc.keep)
        return sc.args, outs, sc.status

    def _native_call(self, args, status, worker=True, result=None):
        """A function that calls the kernel on `args`. Single-row products that may
        split their columns with the shard worker (`microkernels.par_dots`) get its
        words in status[2] while this thread holds the workers' lock; when another call
        holds it (a sharded run) or the worker is asleep (woken now, for the next call),
        one thread runs all. Used by the prepared calls only (`bind`, `repeat`): a
        call through every layer did ~30 µs of Python and left the cores' caches
        cold; the split gained nothing there (measured). The call passes ctypes one
        pointer, to a table of the six arguments (`codegen._packed_entry`). Given
        `result`, the function also raises a failed check's error and returns
        `result` (a bound call: one Python frame less, ~0.1 µs)."""
        table = (ctypes.c_void_p * 6)(*args)
        fn = functools.partial(self._packed, ctypes.addressof(table))
        fail = self._raise
        if not (worker and self.parallel and _threads() > 1):
            if result is None:
                fn.keep = table
                return fn

            def checked():
                fn()
                if status[0]:
                    fail(status)
                return result
            checked.keep = table
            return checked
        with spin.lock:
            worker = spin.workers(1)[0]
        lock, words, address = spin.lock, worker.words, worker.address

        def call():
            if lock.acquire(False):
                try:
                    status[2] = 0 if words[2] and worker.awake() is False else address
                    fn()
                finally:
                    status[2] = 0
                    lock.release()
            else:
                fn()
            if status[0]:
                fail(status)
            return result
        call.keep = table
        return call

    def repeat(self, dims):
        """The call `run` just made on this thread at `dims`, as a function of the
        arrays alone: ``repeat(arrays)`` runs the kernel again with this thread's
        arena and argument tables, or returns None, having run nothing, when an array
        that is not the last call's is not C-contiguous and aligned. The caller
        vouches for the arrays' types, shapes and dtypes being the last call's
        (`autograph.Function` compares them) and calls it on this thread only,
        until the next `run` here; None where kernels do not read array objects."""
        sc = getattr(self._local, "scratch", None)
        if not NATIVE_HEADERS or sc is None or sc.key != self._binding(dims):
            return None
        ins, last, ous, pool = sc.ins, sc.last, sc.ous, sc.outputs
        status, n = sc.status, len(sc.layout.outs)
        run = self._native_call(sc.args, status, REPEAT_WITH_WORKER and not self.loops)
        keep = (sc.layout, sc.arena)     # the addresses in `args` stay theirs

        def repeat(arrays):
            i = 0
            for a in arrays:
                if a is not last[i]:
                    if not (a.flags.c_contiguous and a.flags.aligned):
                        return None
                    ins[i] = id(a)
                    last[i] = a          # (held, so the address stays its own)
                i += 1
            outs = pool.new()
            if not pool.same:            # (else `ous` holds these arrays already)
                ous[:n] = list(map(id, outs))
            run()
            if status[0]:
                self._raise(status)
            return outs
        repeat.keep = keep
        return repeat

    def _new_scratch(self) -> Scratch:
        sc = self._local.scratch = Scratch()
        return sc

    def bind(self, arrays, dims):
        """A call with everything prepared: `arrays` (checked, C-contiguous) stay bound,
        the outputs and the arena are allocated once, the pointers converted once.
        Calling the result runs the kernel on the arrays' current contents and returns
        the same output arrays each time (see `autograph.Function.bind`)."""
        for name, a in zip(self.names, arrays):
            if not (a.flags.c_contiguous and a.flags.aligned):
                raise InputError(f"input {name!r}: bind needs a C-contiguous aligned array; "
                                 "pass np.ascontiguousarray(...)")
        layout = self._layout(dims)
        arena = _arena(layout.nbytes)
        outs = [np.empty(shape, dtype) for shape, dtype in layout.outs]
        heads: list = []
        ins = (ctypes.c_void_p * max(len(arrays), 1))(*handles(arrays, heads))
        ous = (ctypes.c_void_p * max(len(outs), 1))(*handles(outs, heads))
        status = (ctypes.c_int64 * 3)()
        args = (layout.dims_ptr, ctypes.addressof(ins), ctypes.addressof(ous),
                _data_ptr(arena), layout.offsets_ptr, ctypes.addressof(status))
        keep = (list(arrays), outs, heads, arena, ins, ous, layout, self)   # all stay alive
        call = self._native_call(args, status, result=outs)
        call.keep = (keep, call.keep)
        call.args, call.status = args, status     # the raw call (sharded bound calls)
        return call, outs


ARENA_ALIGN = 64      # bytes: a cache line


def _arena(nbytes: int) -> np.ndarray:
    """A kernel's arena: `nbytes` starting at a cache line (NumPy's allocations start
    at 16 or 32 bytes past one for small arrays), so the slots (each a whole number of
    lines, `Program.arena_layout`) do too: no vector load of a slot crosses a line
    needlessly, and two threads writing neighbouring blocks of a slot (`unit_plan`)
    never write one line."""
    raw = np.empty(nbytes + ARENA_ALIGN, dtype=np.uint8)
    skip = -_data_ptr(raw) % ARENA_ALIGN
    return raw[skip:skip + nbytes]


def _threads() -> int:
    from .shard import thread_count     # $AUTOGRAPH_THREADS=1: one thread, no worker
    return thread_count()


class _Layout:
    """A kernel's per-binding constants (see `Kernel._layout`); its arrays stay alive as
    long as the layout, so their addresses can be passed to native code."""

    def __init__(self, nbytes, offsets, dims, outs):
        self.nbytes, self.offsets, self.dims, self.outs = nbytes, offsets, dims, outs
        self.offsets_ptr, self.dims_ptr = _data_ptr(offsets), _data_ptr(dims)
