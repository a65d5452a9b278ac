"""The benchmark workload of DESIGN.md: one training step (forward, loss, every gradient)
of an Elman, LSTM or GRU regressor, timed for every implementation in one run.

    python bench/workload.py                      # every cell, size and dtype
    python bench/workload.py --cells lstm --sizes small --dtypes float32
    autograph bench ...                           # the same program

Implementations: ours compiled (``backend="llvm"``), ours interpreted (NumPy backend),
and the references of `bench/references.py` when their packages are installed: a
hand-written NumPy BPTT with hoisted GEMMs, PyTorch eager (2 threads) and JAX
``jit(value_and_grad)`` over ``lax.scan``. Before timing, every implementation's loss
and gradients are checked against the NumPy interpreter on the same weights.

It prints markdown tables: median ms per step (the implementations timed in
alternated blocks, so that drift and library threads left spinning weigh on all
alike), the speed-up of ours over the fastest reference (> 1 means ours is
faster), GFLOP/s and the fraction of the GEMM peak
measured in the same run; then compile times (cold, cached, T = 16 vs T = 4096), peak
memory and single-step inference latency at B = 1. The machine is shared: read the
ratios, not the absolute times.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import autograph as ag  # noqa: E402
from rnn.workload import SIZES, training_step  # noqa: E402

SIZES = dict(SIZES)      # the named sizes, and this run's --size ones

GATES = {"elman": 1, "lstm": 4, "gru": 3}
TOL = {"float64": 1e-9, "float32": 2e-3}    # references vs the interpreter (relative)


def references():
    """bench/references.py, loaded by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("autograph_bench_references",
                                                  ROOT / "bench" / "references.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def step_flops(cell: str, B: int, T: int, D: int, H: int) -> int:
    """Multiply-adds ×2 of the matrix products of one training step: the forward
    products x·Uᵀ, h·Wᵀ, h·Vᵀ; the backward dU, dW, dV and the two products that carry
    the gradient to h (through W and V). Elementwise work is not counted."""
    G = GATES[cell] * H
    forward = D * G + H * G + H * D
    backward = D * G + 2 * H * G + 2 * H * D
    return 2 * T * B * (forward + backward)


def median_seconds(fn, repeat: int, min_time: float = 0.2) -> float:
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 20 * repeat:
            break
    return float(np.median(times))


def alternated_medians(impls: dict, repeat: int, rounds: int = 5,
                       block: float = 0.05) -> dict:
    """Median seconds per call of each implementation, timed in `rounds` alternated
    blocks (each at least `block` seconds and repeat/rounds calls): a shared machine's
    drift, and thread pools that a library leaves spinning after its own calls
    (PyTorch's, XLA's), then weigh on every implementation alike."""
    for fn in impls.values():
        fn()
    times: dict = {k: [] for k in impls}
    per_block = max(1, -(-repeat // rounds))
    for _ in range(rounds):
        for k, fn in impls.items():
            start, n = time.perf_counter(), 0
            while n < per_block or time.perf_counter() - start < block:
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
                n += 1
    return {k: float(np.median(v)) for k, v in times.items()}


def gemm_peak(dtype: str, n: int = 1024) -> float:
    """GFLOP/s of NumPy's own matrix product (its OpenBLAS, all threads) at n×n×n."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    out = np.empty((n, n), dtype)
    t = median_seconds(lambda: np.matmul(a, b, out=out), 5)
    return 2 * n ** 3 / t / 1e9


def agree(name: str, ref, got, dtype: str) -> None:
    """Raise when `got` = (loss, grads) differs from `ref` beyond the dtype's tolerance."""
    (l0, g0), (l1, g1) = ref, got
    pairs = [("loss", np.asarray(l0), np.asarray(l1))] + [(k, g0[k], g1[k]) for k in g0]
    for k, a, b in pairs:
        scale = max(float(np.max(np.abs(a))), 1e-30)
        err = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        if not err <= TOL[dtype] * scale:
            raise SystemExit(f"{name} disagrees with the interpreter on {k}: "
                             f"max abs error {err:.3g} (scale {scale:.3g}); not timing it")


@contextlib.contextmanager
def private_cache(variable="AUTOGRAPH_CACHE_DIR"):
    """A fresh kernel cache directory, so that 'cold' means cold (or, with
    AUTOGRAPH_LIBRARY_DIR, a fresh directory of product kernels: a new machine's)."""
    saved = os.environ.get(variable)
    with tempfile.TemporaryDirectory() as d:
        os.environ[variable] = d
        try:
            yield d
        finally:
            if saved is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = saved


class Ours:
    """Our training step as a callable ``(x, y) -> (loss, grads)``."""

    def __init__(self, cell, D, H, dtype, backend):
        self.model, data, outputs = training_step(cell, D, H, dtype)
        self.names = list(self.model.state_dict())
        params = list(self.model.nodes().values())
        t0 = time.perf_counter()
        self.fn = ag.function(data + params, outputs, backend=backend)
        self.seconds = time.perf_counter() - t0
        self.params = list(self.model.state_dict().values())

    def __call__(self, x, y):
        out = self.fn(x, y, *self.params)
        return out[0], dict(zip(self.names, out[1:]))


def settle(ours, x, y, pause=0.3, limit=5.0):
    """Let our step decide how it runs (whole or in shards: `compiler/shard.py` races
    both ways on its first calls) as a training loop would: alone, after the thread
    pools of the calls made just before (the interpreter's NumPy, the references'
    agreement checks) have gone idle — not while they spin on both cores."""
    sharder = getattr(ours.fn.runner, "sharder", None)
    if sharder is None:
        return
    time.sleep(pause)
    dims = {"T": x.shape[0], "B": x.shape[1]}
    start = time.perf_counter()
    while sharder.shards_for(dims) is None and time.perf_counter() - start < limit:
        ours(x, y)


def run_case(cell, size, dtype, refs, repeat, peak, log):
    B, T, D, H = SIZES[size]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    y = rng.standard_normal((T, B, D)).astype(dtype)
    ours = Ours(cell, D, H, dtype, "llvm")
    interp = Ours(cell, D, H, dtype, "numpy")
    params = dict(zip(ours.names, ours.params))
    truth = interp(x, y)
    agree("ours (llvm)", truth, ours(x, y), dtype)
    impls = {"ours (llvm)": lambda: ours(x, y), "ours (numpy backend)": lambda: interp(x, y)}
    extra = {}
    if refs is not None:
        impls_ref = {"numpy BPTT": lambda: refs.numpy_bptt(cell, params, x, y)}
        agree("numpy BPTT", truth, impls_ref["numpy BPTT"](), dtype)
        with contextlib.suppress(ImportError):
            f = refs.torch_step(cell, params, dtype)
            agree("torch eager", truth, f(x, y), dtype)
            impls_ref["torch eager"] = lambda: f(x, y)
        with contextlib.suppress(ImportError):
            g, compile_s = refs.jax_step(cell, params, dtype, T=T, B=B)
            agree("jax jit", truth, g(x, y), dtype)
            impls_ref["jax jit"] = lambda: g(x, y)
            extra["jax compile s"] = compile_s
        impls.update(impls_ref)
    settle(ours, x, y)
    times = alternated_medians(impls, repeat)
    flops = step_flops(cell, B, T, D, H)
    ref_names = [k for k in times if not k.startswith("ours")]
    best_ref = min(ref_names, key=times.get) if ref_names else "ours (numpy backend)"
    rows = []
    for k, t in times.items():
        gflops = flops / t / 1e9
        rows.append((cell, size, dtype, k, 1e3 * t, times[best_ref] / t, gflops,
                     100 * gflops / peak[dtype]))
    return rows, best_ref, extra


def compile_report(dtype, log, rounds: int = 5):
    """Cold and cached compile of the LSTM training step, and T = 16 against T = 4096:
    medians of `rounds` compiles each (T = 16 and T = 4096 alternated), every cold
    compile in a new, empty cache."""
    import compiler
    B, T, D, H = SIZES["small"]

    def graph():
        model, data, outputs = training_step("lstm", D, H, dtype)
        return model, ag.Graph(data + list(model.nodes().values()), outputs)

    # The product kernels (`compiler/microkernels.py`) that the step calls are built
    # once per machine (by `autograph library`, or the first time a kernel calls them),
    # and kept apart from the kernel cache: the first compile on a new machine (no
    # product kernels stored, none in this process) builds them too. It is timed once,
    # here; the cold compiles below find them built.
    from compiler import jit, microkernels
    built = dict(jit._library)
    with private_cache(), private_cache("AUTOGRAPH_LIBRARY_DIR"):
        jit._library.clear()
        before = jit.library_seconds
        t0 = time.perf_counter()
        first = compiler.compile_graph(graph()[1])
        t_first = time.perf_counter() - t0
        t_library = jit.library_seconds - before
        called = microkernels.called_by(first.kernel.object_code)
    jit._library.update(built)
    colds, warms, t_len, kernels = [], [], {16: [], 4096: []}, {}
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        with private_cache():
            t0 = time.perf_counter()
            cold = compiler.compile_graph(graph()[1])
            colds.append((time.perf_counter() - t0, cold))
            t0 = time.perf_counter()
            warm = compiler.compile_graph(graph()[1])
            warms.append(time.perf_counter() - t0)
            assert warm.timings["cache_hit"], "the second compile should load from the cache"
        # T is a runtime argument: the kernel compiled for a T = 16 run serves T = 4096 too
        for n in (16, 4096):
            with private_cache():
                m, g = graph()
                t0 = time.perf_counter()
                f = ag.function(g.inputs, g.outputs, backend="llvm")
                t_len[n].append(time.perf_counter() - t0)
                kernels[n] = f.runner.kernel
                f(rng.standard_normal((n, B, D)).astype(dtype),
                  rng.standard_normal((n, B, D)).astype(dtype), *m.state_dict().values())
    t_cold, cold = sorted(colds, key=lambda c: c[0])[len(colds) // 2]
    same = kernels[16].ir_text == kernels[4096].ir_text == cold.kernel.ir_text
    med = {n: float(np.median(v)) for n, v in t_len.items()}
    log(f"| LSTM step, {dtype}, D={D} H={H} | cold compile {t_cold * 1e3:.0f} ms "
        f"(rewrite {cold.timings['rewrite'] * 1e3:.0f}, lower {cold.timings['lower'] * 1e3:.0f}, "
        f"codegen {cold.timings['codegen'] * 1e3:.0f}, LLVM+JIT {cold.timings['jit'] * 1e3:.0f}) "
        f"| cache load {np.median(warms) * 1e3:.1f} ms | cold compile for a T=16 run "
        f"{med[16] * 1e3:.0f} ms, for a T=4096 run {med[4096] * 1e3:.0f} ms "
        f"(ratio {med[4096] / med[16]:.2f}); one kernel: {same} | first compile on a new "
        f"machine {t_first * 1e3:.0f} ms, of which {t_library * 1e3:.0f} ms building the "
        f"product kernels it calls ({', '.join(k for k, _ in called)}; once per machine) |")


def memory_report(cell, size, dtype, log):
    """Memory of one compiled step: the kernel's arena (every temporary, the activations
    stored for the backward pass included; kept between calls) and its outputs (loss and
    gradients), against the parameters, the inputs and one [T, B, H] activation. The
    arena is split into its slots that grow with T (stacks over time) and the rest."""
    B, T, D, H = SIZES[size]
    ours = Ours(cell, D, H, dtype, "llvm")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    y = rng.standard_normal((T, B, D)).astype(dtype)
    outs = ours.fn(x, y, *ours.params)
    kernel = ours.fn.runner.kernel
    env = {"T": T, "B": B}
    arena = kernel.prog.arena_layout(env)[0]
    item = np.dtype(dtype).itemsize
    stacks = sum(n.evaluate(env) * k for n, k in kernel.prog.slots if "T" in n.symbols)
    n_params = sum(p.size for p in ours.params)
    act = T * B * H * item
    mib = 2 ** 20
    log(f"| {cell} {size} {dtype} | arena {arena / mib:.1f} MiB = {arena / act:.1f} [T,B,H] "
        f"| stacks over time {stacks / act:.1f} [T,B,H] | the rest (constant in T) "
        f"{(arena - stacks) / mib:.1f} MiB | outputs {sum(o.nbytes for o in outs) / mib:.1f} "
        f"MiB | parameters {n_params * item / mib:.1f} MiB | inputs x, y "
        f"{2 * x.nbytes / mib:.1f} MiB |")


def latency_report(cell, dtype, repeat, log):
    """One step of the cell at B = 1 (inference, no gradient): ours against PyTorch."""
    import rnn
    B, T, D, H = SIZES["small"]
    c = rnn.CELLS[cell](D, H, dtype=dtype).init(0)
    x = ag.placeholder("x", (1, D), dtype)
    state = [ag.placeholder(f"s{i}", (1, H), dtype) for i in range(len(c.state_names))]
    new_state, out = c.step(tuple(state), x)
    params = list(c.nodes().values())
    f = ag.function([x, *state, *params], [out, *new_state], backend="llvm")
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((1, D)).astype(dtype)
    sv = [np.zeros((1, H), dtype) for _ in state]
    pv = list(c.state_dict().values())
    t_call = median_seconds(lambda: f(xv, *sv, *pv), repeat * 20)
    step = f.bind(xv, *sv, *pv)          # the prepared call of a generation loop
    t_ours = median_seconds(step, repeat * 200)
    line = (f"| {cell} {dtype} H={H} | ours {t_ours * 1e6:.1f} µs (bound call; "
            f"{t_call * 1e6:.1f} µs through a plain call)")
    try:
        import torch
    except ImportError:
        log(line + " | torch not installed |")
        return
    torch.set_num_threads(2)
    tdt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    mod = {"elman": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[cell](
        D, H).to(tdt)
    xt = torch.tensor(xv)
    st = tuple(torch.zeros(1, H, dtype=tdt) for _ in state)
    arg = st if cell == "lstm" else st[0]
    with torch.no_grad():
        t_torch = median_seconds(lambda: mod(xt, arg), repeat * 20)
    log(line + f" | torch eager {t_torch * 1e6:.1f} µs | torch/ours {t_torch / t_ours:.1f}x |")


def profile_report(cell, size, dtype, repeat, log):
    """Our step's statements with the time each takes (`compiler.profile`: one thread,
    whole calls; a loop's line includes its body's, indented under it)."""
    from compiler.profile import format_profile, profile
    B, T, D, H = SIZES[size]
    ours = Ours(cell, D, H, dtype, "llvm")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    y = rng.standard_normal((T, B, D)).astype(dtype)
    lines = profile(ours.fn, x, y, *ours.params, calls=max(3, repeat))
    total = sum(ln.seconds for ln in lines if ln.depth == 0)
    log(f"\n## where our step spends its time: {cell} {size} {dtype} "
        f"({total * 1e3:.3f} ms a call, one thread)\n")
    log("```\n" + format_profile(lines) + "\n```")


def _size(text: str) -> tuple:
    """"B,T,D,H" -> (B, T, D, H), each a positive integer."""
    parts = text.replace(" ", "").split(",")
    try:
        dims = tuple(int(v) for v in parts)
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: give four positive integers B,T,D,H, e.g. 3,37,50,100")
    return dims


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="autograph bench", description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", choices=list(GATES), default=list(GATES))
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None,
                   help="named sizes of the workload (default: all, unless --size is given)")
    p.add_argument("--size", action="append", default=[], metavar="B,T,D,H", type=_size,
                   help="a size of your own: batch, steps, input and hidden width "
                        "(repeatable; e.g. --size 3,37,50,100)")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "float64"],
                   default=["float32", "float64"])
    p.add_argument("--repeat", type=int, default=10, help="timed runs per case (default 10)")
    p.add_argument("--no-refs", action="store_true",
                   help="time only our two backends (no NumPy BPTT, PyTorch or JAX)")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing, show where our compiled step spends its time, "
                        "statement by statement (compiler.profile)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.sizes is None:
        args.sizes = [] if args.size else list(SIZES)
    for dims in args.size:
        name = "B{}-T{}-D{}-H{}".format(*dims)
        SIZES[name] = dims
        args.sizes.append(name)
    log = print
    if args.profile:
        for size in args.sizes:
            for cell in args.cells:
                for dtype in args.dtypes:
                    profile_report(cell, size, dtype, args.repeat, log)
        return 0
    try:
        import torch
        torch.set_num_threads(2)
        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    refs = None if args.no_refs else references()
    peak = {dt: gemm_peak(dt) for dt in args.dtypes}
    log(f"# autograph training-step benchmark\n\n{os.cpu_count()} CPUs; torch {torch_version}; "
        "GEMM peak measured now (NumPy matmul, n = 1024): "
        + ", ".join(f"{dt} {peak[dt]:.0f} GFLOP/s" for dt in args.dtypes) + "\n")
    log("| cell | size | dtype | implementation | ms/step | speed-up of this over the fastest "
        "reference | GFLOP/s | % of GEMM peak |")
    log("|---|---|---|---|---:|---:|---:|---:|")
    summary = []
    for size in args.sizes:
        for cell in args.cells:
            for dtype in args.dtypes:
                rows, best, extra = run_case(cell, size, dtype, refs, args.repeat, peak, log)
                for r in rows:
                    log(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]:.2f} | "
                        f"{r[6]:.1f} | {r[7]:.0f}% |")
                ours = next(r for r in rows if r[3] == "ours (llvm)")
                summary.append((cell, size, dtype, best, ours[5], ours[7], extra))
                sys.stdout.flush()
    log("\n## ours (llvm) against the fastest reference\n")
    log("| cell | size | dtype | fastest reference | ours is faster by | ours % of peak | "
        "JAX compile |")
    log("|---|---|---|---|---:|---:|---:|")
    for cell, size, dtype, best, ratio, frac, extra in summary:
        jc = f"{extra['jax compile s']:.2f} s" if "jax compile s" in extra else "-"
        log(f"| {cell} | {size} | {dtype} | {best} | {ratio:.2f}x | {frac:.0f}% | {jc} |")
    log("\n## compile time (LSTM training step)\n")
    for dtype in args.dtypes:
        compile_report(dtype, log)
    log("\n## peak memory of one compiled step\n")
    for cell in args.cells:
        memory_report(cell, args.sizes[-1], args.dtypes[0], log)
    log("\n## single-step inference latency, B = 1\n")
    for cell in args.cells:
        for dtype in args.dtypes:
            latency_report(cell, dtype, args.repeat, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
