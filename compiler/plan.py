"""Buffer planning: place every arena buffer in a slot of one arena, reusing slots.

Statements are numbered in program order (a loop body inside its loop's range). A
buffer is live from its first to its last access; a buffer accessed inside a loop
and also outside it is live for the whole loop, since every iteration needs it
(carries, stored activations, loop-invariant weights), and so is a product's weights
in panels, which the loop packs on its first step and reads on every step. Buffers
whose live ranges do not overlap share a slot when they have the same size expression
and item size, so one binding of the dims fixes the whole layout:
`Program.arena_layout` computes the slots' byte offsets at call time.
"""
from __future__ import annotations

from .loopir import ITEMSIZE, Loop, Program


def _intervals(body):
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    loops: list[tuple[int, int, set]] = []
    kept: set = set()       # panels of a loop's products: packed once, read every step
    pos = 0

    def visit(stmts) -> set:
        nonlocal pos
        touched = set()
        for s in stmts:
            if isinstance(s, Loop):
                start = pos
                inner = visit(s.body)
                loops.append((start, pos, inner))
                touched |= inner
                continue
            if getattr(s, "packed", None) is not None:
                kept.add(s.packed.buf.id)
            for r in s.refs():
                b = r.buf
                if b.kind != "arena":
                    continue
                first.setdefault(b.id, pos)
                last[b.id] = pos
                touched.add(b.id)
            pos += 1
        return touched

    visit(body)
    for start, end, inner in loops:
        for b in inner:
            if first[b] < start or last[b] >= end or b in kept:
                first[b] = min(first[b], start)
                last[b] = max(last[b], end)
    return first, last


def plan(prog: Program) -> Program:
    """Assign `index` (the arena slot) to every arena buffer and fill `prog.slots`."""
    first, last = _intervals(prog.body)
    bufs = sorted((b for b in prog.buffers if b.kind == "arena" and b.id in first),
                  key=lambda b: first[b.id])
    slots: list = []           # (size, itemsize)
    free_at: list[int] = []    # position after which the slot is free
    for b in bufs:
        key = (b.size, ITEMSIZE[b.dtype])
        for k, (size, item) in enumerate(slots):
            if (size, item) == key and free_at[k] < first[b.id]:
                b.index = k
                free_at[k] = last[b.id]
                break
        else:
            b.index = len(slots)
            slots.append(key)
            free_at.append(last[b.id])
    prog.slots = slots
    return prog
