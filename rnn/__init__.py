"""rnn: the textbook's recurrent networks on the autograph core.

Cells (`Elman`, `LSTM`, `GRU`) hold their parameters as NumPy arrays and build one
time step as a graph; `run` scans a cell over time (with padding masks), `RNN`
stacks cells and makes them bidirectional. Weights move to and from PyTorch's state
dicts exactly. `explain_gradient` takes ∂L/∂W apart into the BPTT terms ∂L_t/∂W^(k).
"""
from .architectures import (Attention, Decoded, OneToMany, OneToOne, Seq2Seq,
                            SequenceClassifier, Tagger, shift_targets, token_accuracy)
from .bptt import BPTTExplanation, explain_gradient
from .cells import CELLS, GRU, LSTM, Cell, Elman
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .data import (EOS, GO, NUM, PAD, UNK, URL, Vocab, batches, char_tokens, pad_batch,
                   word_tokens)
from .layers import RNN, Embedding, Linear, one_hot, run
from .losses import sequence_cross_entropy, squared_error
from .module import Module
from .train import Step, Trainer, compile_function
from .optim import (OPTIMIZERS, SGD, Adam, Momentum, Optimizer, clip_by_global_norm,
                    clip_by_value, global_norm)

__all__ = [name for name in dir() if not name.startswith("_")]
