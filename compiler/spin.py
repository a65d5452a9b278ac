"""Hand-offs between the threads of a sharded call without sleeping.

A thread that sleeps on a lock and is woken by another pays the wake-up of an idle
CPU: here (a 2-vCPU VM) about 200 µs per hand-off, measured by
bench/shard_threshold.py — more than a whole small training step. OpenMP runtimes
and OpenBLAS avoid it by spinning for a while before they sleep; so do we.

`spin_until(word, value, iterations)` is a few instructions of native code (built
with llvmlite once per process): it polls a 64-bit word with an acquire load and
the CPU's pause hint until the word equals `value`, or gives up after `iterations`
polls. It is called through ctypes, which releases the GIL, so the thread it runs
on waits without holding up the other threads' Python code.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import os
import threading

import llvmlite.binding as llvm
import llvmlite.ir as ir

PTR = ir.PointerType()
I64 = ir.IntType(64)


def _pause(mod, b, x86):
    if x86:
        fn = mod.globals.get("llvm.x86.sse2.pause") or ir.Function(
            mod, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
        b.call(fn, [])


def _spin_until(mod, x86):
    """i64 ag_spin_until(ptr word, i64 value, i64 polls): 1 when *word == value."""
    fn = ir.Function(mod, ir.FunctionType(I64, [PTR, I64, I64]), "ag_spin_until")
    word, want, limit = fn.args
    entry, loop, body, yes, no = (fn.append_basic_block(n)
                                  for n in ("entry", "loop", "body", "yes", "no"))
    b = ir.IRBuilder(entry)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(I64)
    i.add_incoming(I64(0), entry)
    v = b.load_atomic(word, "acquire", 8, typ=I64)
    b.cbranch(b.icmp_unsigned("==", v, want), yes, body)
    b.position_at_end(body)
    _pause(mod, b, x86)
    nxt = b.add(i, I64(1))
    i.add_incoming(nxt, body)
    b.cbranch(b.icmp_unsigned("<", nxt, limit), loop, no)
    b.position_at_end(yes)
    b.ret(I64(1))
    b.position_at_end(no)
    b.ret(I64(0))


def store_release(b, value, ptr):
    """An atomic release store (IRBuilder.store_atomic still asks its pointer for a
    pointee type, which opaque pointers lack: the instruction is built here)."""
    b._insert(ir.instructions.StoreAtomicInstr(b.block, value, ptr, "release", 8))


def emit_idle(b, word):
    """(i1: the worker whose words `word(k)` points at is idle and awake, its post
    count), emitted at `b`: a kernel posts to it only then."""
    posted = b.load_atomic(word(0), "acquire", 8, typ=I64)
    done = b.load_atomic(word(1), "acquire", 8, typ=I64)
    asleep = b.load_atomic(word(2), "monotonic", 8, typ=I64)
    return b.and_(b.icmp_unsigned("==", posted, done),
                  b.icmp_unsigned("==", asleep, I64(0))), posted


def emit_join(mod, b, word, posted0, polls, x86, mine, exit_bb):
    """Wait (at `b`, in its function) for the worker to finish the job posted as
    number posted0 + 1; if none has claimed it after `polls` polls (it fell asleep
    between the check and the post), claim it back — the compare-and-swap of word 10
    that the worker makes too (`_worker_loop`), so the job runs once — emit `mine()`
    (the job, done here) and mark it done. Both ways end in a branch to `exit_bb`."""
    fn = b.function
    poll_bb, pause_bb, retract_bb, mine_bb = (fn.append_basic_block(n) for n in (
        "join.poll", "join.pause", "join.retract", "join.mine"))
    posted = b.add(posted0, I64(1))
    pre = b.block
    b.branch(poll_bb)
    b.position_at_end(poll_bb)
    count = b.phi(I64, name="polls")
    count.add_incoming(I64(0), pre)
    finished = b.load_atomic(word(1), "acquire", 8, typ=I64)
    b.cbranch(b.icmp_unsigned("==", finished, posted), exit_bb, pause_bb)
    b.position_at_end(pause_bb)
    _pause(mod, b, x86)
    nxt = b.add(count, I64(1))
    count.add_incoming(nxt, pause_bb)
    b.cbranch(b.icmp_signed("==", nxt, I64(polls)), retract_bb, poll_bb)
    b.position_at_end(retract_bb)
    claim = b.cmpxchg(word(10), posted0, posted, "acq_rel", "monotonic")
    count.add_incoming(nxt, retract_bb)
    b.cbranch(b.extract_value(claim, 1), mine_bb, poll_bb)
    b.position_at_end(mine_bb)
    mine()
    store_release(b, posted, word(1))
    b.branch(exit_bb)


def _worker_loop(mod, x86):
    """void ag_worker_loop(ptr words, i64 polls): run posted kernel calls until no
    job has come for `polls` polls. words: [0] jobs posted, [1] jobs done, [3] the
    kernel's address, [4..9] its six arguments, [10] jobs claimed. A job is run only
    by whoever moves [10] from [1] to [0] first: the worker, or a kernel that posted
    half a product and took it back when no worker came (`microkernels.par_dots`)."""
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [PTR, I64]), "ag_worker_loop")
    words, limit = fn.args
    entry, loop, wait, run, done = (fn.append_basic_block(n)
                                    for n in ("entry", "loop", "wait", "run", "done"))
    b = ir.IRBuilder(entry)

    def word(k):
        return b.gep(words, [I64(k)], inbounds=True, source_etype=I64)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(I64)
    i.add_incoming(I64(0), entry)
    posted = b.load_atomic(word(0), "acquire", 8, typ=I64)
    finished = b.load_atomic(word(1), "monotonic", 8, typ=I64)
    b.cbranch(b.icmp_unsigned("!=", posted, finished), run, wait)
    b.position_at_end(wait)
    _pause(mod, b, x86)
    nxt = b.add(i, I64(1))
    i.add_incoming(nxt, wait)
    b.cbranch(b.icmp_unsigned("<", nxt, limit), loop, done)
    b.position_at_end(run)
    claim = b.cmpxchg(word(10), finished, posted, "acq_rel", "monotonic")
    call = fn.append_basic_block("call")
    b.cbranch(b.extract_value(claim, 1), call, wait)    # taken back by its poster: wait
    b.position_at_end(call)
    kernel_t = ir.FunctionType(ir.VoidType(), [PTR] * 6)
    target = b.inttoptr(b.load(word(3), typ=I64), kernel_t.as_pointer())
    b.call(target, [b.inttoptr(b.load(word(4 + k), typ=I64), PTR) for k in range(6)])
    store_release(b, posted, word(1))
    i.add_incoming(I64(0), call)
    b.branch(loop)
    b.position_at_end(done)
    b.ret_void()


def _module(x86: bool) -> str:
    mod = ir.Module(name="spin")
    _spin_until(mod, x86)
    _worker_loop(mod, x86)
    return str(mod)


@functools.lru_cache(maxsize=None)
def _compiled():
    """(engine, spin_until, worker_loop), built once per process."""
    from .jit import _new_target_machine, target_machine
    triple = target_machine()[3]
    mod = llvm.parse_assembly(_module(triple.startswith(("x86_64", "i686", "i386"))))
    mod.verify()
    engine = llvm.create_mcjit_compiler(mod, _new_target_machine())
    engine.finalize_object()
    spin = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)(
        engine.get_function_address("ag_spin_until"))
    loop = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(
        engine.get_function_address("ag_worker_loop"))
    return engine, spin, loop


def spin_until(address: int, value: int, iterations: int) -> bool:
    """Poll the int64 at `address` until it equals `value` (True), at most
    `iterations` times (False). The GIL is released meanwhile."""
    return bool(_compiled()[1](address, value, iterations))


# Polls before an idle worker sleeps: about 1–3 ms at ~30–100 ns per pause.
SPIN_POLLS = 40_000


class Worker:
    """A thread that runs kernel calls posted to it, entirely in native code: it
    spins in `ag_worker_loop` (no GIL) and calls each posted kernel as soon as its
    arguments are posted; after `SPIN_POLLS` polls without work it sleeps until the
    next post. One poster at a time (`compiler.shard` holds a lock)."""

    def __init__(self):
        _compiled()      # built here, so that a failure is the caller's exception
        # [0] calls posted, [1] calls done, [2] asleep, [3] kernel address, [4..9] args,
        # [10] calls claimed (see `_worker_loop`)
        self._words = (ctypes.c_int64 * 11)()
        self._addr = ctypes.addressof(self._words)
        self._wake = threading.Event()
        self._posted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="autograph-shard", daemon=True)
        self._thread.start()

    def _loop(self):
        loop, words = _compiled()[2], self._words
        while not self._stop:
            loop(self._addr, SPIN_POLLS)        # returns after SPIN_POLLS idle polls
            words[2] = 1                         # asleep; then look once more (no lost wake-up)
            if words[0] == words[1] and not self._stop:
                self._wake.wait()
            self._wake.clear()
            words[2] = 0

    def post(self, address: int, args) -> None:
        """Start the kernel at `address` on its six native arguments."""
        w = self._words
        w[3] = address
        for k, a in enumerate(args):
            w[4 + k] = a
        # the count goes on from the words, not from a counter of our own: kernels post
        # too (`microkernels.par_dots`); the poster holds `lock`, so the worker is idle
        self._posted = w[0] + 1
        w[0] = self._posted
        if w[2]:
            self._wake.set()

    def wait(self) -> None:
        """Until the posted call has returned (spinning, the GIL released)."""
        done = False
        while not done:      # each poll round releases the GIL; between rounds, signals
            done = spin_until(self._addr + 8, self._posted, SPIN_POLLS)

    @property
    def words(self):
        """[0] posted, [1] done, [2] asleep, [3] kernel, [4..9] arguments, [10] claimed."""
        return self._words

    @property
    def address(self) -> int:
        """Where its words are: a kernel posts half of a product there (`par_dots`)."""
        return self._addr

    def awake(self) -> bool:
        """Spinning (a post starts at once), else woken now for the next post."""
        if self._words[2]:
            self._wake.set()
            return False
        return True

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)


_workers: list = []
lock = threading.Lock()          # held by the one sharded call that uses the workers


_pid = os.getpid()


def workers(n: int) -> list:
    """`n` workers (started on first use; the caller holds `lock`). A forked child
    has none of its parent's threads: it starts its own."""
    global _pid
    if os.getpid() != _pid:
        _workers.clear()
        _pid = os.getpid()
    while len(_workers) < n:
        _workers.append(Worker())
    return _workers[:n]


@atexit.register
def _stop_all():
    # Stop the workers before the interpreter frees the JIT-compiled loop they run.
    for w in _workers:
        w.stop()
