"""Checkpoints: one ``.npz`` per save, written atomically, read without pickle."""
from __future__ import annotations

import json
import os
import pathlib
import zipfile
from dataclasses import dataclass, field

import numpy as np

FORMAT = "autograph-checkpoint-1"


class CheckpointError(Exception):
    """A checkpoint that cannot be read, or that belongs to another model."""


@dataclass
class Checkpoint:
    """What a checkpoint holds: parameters, optimizer state, carried arrays, metadata."""

    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def save_checkpoint(path, ckpt: Checkpoint) -> pathlib.Path:
    """Write `ckpt` to `path` atomically: a crash or Ctrl-C during the write leaves the
    previous file intact (the new one is written beside it, synced, then renamed)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"format": np.array(FORMAT), "meta": np.array(json.dumps(ckpt.meta))}
    for prefix, group in (("param", ckpt.params), ("opt", ckpt.optimizer),
                          ("array", ckpt.arrays)):
        for k, v in group.items():
            arrays[f"{prefix}:{k}"] = np.asarray(v)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` (never unpickles anything)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint (corrupt or "
                              f"truncated?): {e}") from e
    if "format" not in data or str(data["format"]) != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an autograph checkpoint "
                              f"(expected format {FORMAT!r})")
    try:
        meta = json.loads(str(data["meta"]))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r}: its metadata is unreadable: {e}") from e
    out = Checkpoint(params={}, meta=meta)
    groups = {"param": out.params, "opt": out.optimizer, "array": out.arrays}
    for k, v in data.items():
        if ":" in k:
            prefix, name = k.split(":", 1)
            if prefix in groups:
                groups[prefix][name] = v
    return out
