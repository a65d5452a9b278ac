"""Training: a compiled step (loss and every gradient in one call) and a loop with a
progress bar, periodic evaluation, clipping and atomic checkpoints."""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np

import autograph as ag

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .module import Module
from .optim import Optimizer, clip_by_global_norm, clip_by_value

# Training steps are compiled to native code by default; `compile_function` falls back
# to the NumPy reference backend, with a warning, if compiling fails.
DEFAULT_BACKEND = "llvm"


def compile_function(inputs, outputs, backend: str):
    """`ag.function` on `backend`; if a non-NumPy backend fails to build the graph, warn
    and fall back to the NumPy reference backend."""
    try:
        return ag.function(inputs, outputs, backend)
    except ag.BackendError as e:
        if backend == "numpy":
            raise
        warnings.warn(f"backend {backend!r} could not compile this graph ({e}); "
                      "falling back to the NumPy backend", RuntimeWarning, stacklevel=3)
        return ag.function(inputs, outputs, "numpy")


class Step:
    """The loss, extra outputs and ∂loss/∂θ for every parameter θ of `model`, as one
    callable built from the graph: ``loss, outputs, grads = step(*data)``."""

    def __init__(self, model: Module, inputs: Sequence[ag.Node], loss: ag.Node,
                 outputs: Sequence[ag.Node] = (), backend: str = DEFAULT_BACKEND):
        self.model = model
        nodes = model.nodes()
        self.names = list(nodes)
        params = list(nodes.values())
        grads = ag.grad(loss, params)
        self.n_out = len(outputs)
        self.inputs = list(inputs)
        self.fn = compile_function(self.inputs + params, [loss, *outputs, *grads], backend)
        self._forward = None
        self._forward_graph = (self.inputs + params, [loss, *outputs], backend)

    def __call__(self, *data):
        values = self.fn(*data, *self.model.state_dict().values())
        loss, rest = float(values[0]), values[1:]
        return loss, rest[:self.n_out], dict(zip(self.names, rest[self.n_out:]))

    def evaluate(self, *data):
        """Loss and outputs without the backward pass."""
        if self._forward is None:
            self._forward = compile_function(*self._forward_graph)
        values = self._forward(*data, *self.model.state_dict().values())
        return float(values[0]), values[1:]


class Trainer:
    """Runs a `Step` with an optimizer: clipping, evaluation, checkpoints, resuming.

    `arrays` holds extra state that a resumed run needs (the carried hidden state of
    truncated BPTT, say); it is saved in every checkpoint.
    """

    def __init__(self, step: Step, optimizer: Optimizer, *, clip_norm: float | None = None,
                 clip_value: float | None = None, checkpoint: str | None = None,
                 meta: dict | None = None):
        self.step_fn, self.model, self.optimizer = step, step.model, optimizer
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.checkpoint, self.meta = checkpoint, dict(meta or {})
        self.steps_done = 0
        self.arrays: dict[str, np.ndarray] = {}
        self.history: list[dict] = []

    def train_step(self, *data):
        """One update; returns ``(loss, outputs, grad_norm)``."""
        loss, outputs, grads = self.step_fn(*data)
        if not np.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss} at step {self.steps_done + 1}; "
                                     "lower the learning rate or clip the gradients")
        norm = None
        if self.clip_value is not None:
            grads = clip_by_value(grads, self.clip_value)
        if self.clip_norm is not None:
            grads, norm = clip_by_global_norm(grads, self.clip_norm)
        self.optimizer.step(self.model.state_dict(), grads)
        self.steps_done += 1
        return loss, outputs, norm

    def fit(self, next_batch: Callable[[int], tuple], steps: int, *,
            after_step: Callable | None = None, evaluate: Callable[[], dict] | None = None,
            eval_every: int = 0, checkpoint_every: int = 0, progress: bool = True,
            describe: Callable[[float], str] | None = None) -> list[dict]:
        """Train until `steps` updates are done in all (a resumed run continues).

        `next_batch(i)` gives the data of update i (derive it from i alone, so a
        resumed run sees the same batches); `after_step(i, outputs)` sees each step's
        extra outputs; `evaluate()` returns metrics, logged every `eval_every` steps.
        Ctrl-C stops cleanly: the last checkpoint written stays intact.
        """
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=self.steps_done, disable=not progress,
                   dynamic_ncols=True, unit="step")
        smooth = None
        try:
            while self.steps_done < steps:
                i = self.steps_done
                loss, outputs, _ = self.train_step(*next_batch(i))
                if after_step is not None:
                    after_step(i, outputs)
                smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
                bar.update(1)
                bar.set_postfix_str(describe(smooth) if describe else f"loss {smooth:.4f}")
                record = {"step": self.steps_done, "loss": loss}
                if evaluate is not None and eval_every and self.steps_done % eval_every == 0:
                    record.update(evaluate())
                    bar.write("step {}: ".format(self.steps_done) + ", ".join(
                        f"{k} {v:.4f}" for k, v in record.items() if k != "step"))
                self.history.append(record)
                if self.checkpoint and checkpoint_every and self.steps_done % checkpoint_every == 0:
                    self.save()
        except KeyboardInterrupt:
            bar.write(f"interrupted at step {self.steps_done}; the last checkpoint is intact")
            raise
        finally:
            bar.close()
        if self.checkpoint:
            self.save()
        return self.history

    # ----------------------------------------------------------------- checkpoints

    def save(self, path=None):
        """Write the model, the optimizer, `arrays` and the step count atomically."""
        meta = dict(self.meta, steps_done=self.steps_done,
                    optimizer=type(self.optimizer).__name__)
        return save_checkpoint(path or self.checkpoint, Checkpoint(
            params=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            arrays=self.arrays, meta=meta))

    def resume(self, path=None) -> Checkpoint:
        """Continue from a checkpoint of the same model (config in `meta` must match)."""
        ckpt = load_checkpoint(path or self.checkpoint)
        mine = {k: v for k, v in self.meta.items()}
        theirs = {k: ckpt.meta.get(k) for k in mine}
        if mine != theirs:
            diff = {k: (theirs[k], mine[k]) for k in mine if theirs[k] != mine[k]}
            raise CheckpointError(f"the checkpoint is from another model: (theirs, ours) = {diff}")
        if ckpt.meta.get("optimizer") != type(self.optimizer).__name__:
            raise CheckpointError(f"the checkpoint was trained with {ckpt.meta.get('optimizer')}, "
                                  f"not {type(self.optimizer).__name__}")
        try:
            self.model.load_state_dict(ckpt.params)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"the checkpoint does not fit this model: {e}") from e
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.arrays = dict(ckpt.arrays)
        self.steps_done = int(ckpt.meta.get("steps_done", 0))
        return ckpt
