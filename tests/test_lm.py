"""The character language model and the `autograph train` / `sample` commands."""
import numpy as np
import pytest

import rnn
from autograph.cli import main
from rnn.lm import (default_corpus, load_language_model, sample, stream_batches,
                    train_language_model, unigram_entropy)

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40
        + "pack my box with five dozen liquor jugs. " * 40)
SMALL = dict(hidden_size=16, batch=4, seq_len=8, eval_every=0, progress=False, log=lambda *a: None)


def test_learns_real_text_well_below_the_unigram_entropy():
    text, files = default_corpus("json")   # text nobody here wrote, on every machine
    r = train_language_model(text, hidden_size=64, batch=16, seq_len=32, steps=150,
                             lr=1e-2, eval_every=0, progress=False, log=lambda *a: None)
    assert r["val_bits_per_char"] < r["unigram_entropy"] - 0.8, \
        (r["val_bits_per_char"], r["unigram_entropy"])


def test_unigram_entropy_matches_its_definition():
    ids = np.array([0, 0, 1, 2])
    assert unigram_entropy(ids) == pytest.approx(1.5)


def test_stream_batches_pair_each_token_with_the_next():
    ids = np.arange(50)
    n, chunk = stream_batches(ids, batch=3, seq_len=4)
    x, y = chunk(1)
    assert x.shape == (4, 3) and np.array_equal(y, x + 1)
    for wrapped, first in zip(chunk(n), chunk(0)):  # the next epoch starts over
        assert np.array_equal(wrapped, first)
    with pytest.raises(ValueError, match="too short"):
        stream_batches(np.arange(10), batch=4, seq_len=8)


def test_resume_continues_exactly(tmp_path):
    straight = train_language_model(TEXT, steps=6, **SMALL)["model"].state_dict()
    ck = tmp_path / "lm.npz"
    train_language_model(TEXT, steps=3, checkpoint=str(ck), **SMALL)
    resumed = train_language_model(TEXT, steps=6, checkpoint=str(ck), resume=True,
                                   **SMALL)["model"].state_dict()
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    ck = tmp_path / "lm.npz"
    train_language_model(TEXT, steps=2, checkpoint=str(ck), **SMALL)
    other = dict(SMALL, hidden_size=8)
    with pytest.raises(rnn.CheckpointError, match="another model"):
        train_language_model(TEXT, steps=4, checkpoint=str(ck), resume=True, **other)


def test_ctrl_c_leaves_the_last_checkpoint_intact(tmp_path, monkeypatch):
    ck = tmp_path / "lm.npz"
    calls = {"n": 0}
    real = rnn.Trainer.train_step

    def interrupted(self, *data):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, *data)

    monkeypatch.setattr(rnn.Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_language_model(TEXT, steps=10, checkpoint=str(ck), checkpoint_every=2, **SMALL)
    ckpt = rnn.load_checkpoint(ck)
    assert ckpt.meta["steps_done"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name != "lm.npz"]  # no temp file left


def test_sampling_is_deterministic_per_seed_and_respects_temperature(tmp_path):
    ck = tmp_path / "lm.npz"
    train_language_model(TEXT, steps=4, checkpoint=str(ck), **SMALL)
    model, vocab, graphs = load_language_model(ck)
    a = sample(graphs, model, vocab, "the ", 40, 0.7, seed=1)
    assert a == sample(graphs, model, vocab, "the ", 40, 0.7, seed=1)
    assert len(a) == 40 and set(a) <= set(TEXT)
    with pytest.raises(ValueError, match="temperature"):
        sample(graphs, model, vocab, "the ", 5, 0.0)


def test_train_and_sample_commands(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    ck = tmp_path / "ck" / "lm.npz"
    assert main(["train", str(corpus), "--steps", "4", "--hidden", "16", "--batch", "4",
                 "--seq-len", "8", "--eval-every", "2", "--checkpoint", str(ck), "--quiet",
                 "--sample-length", "20"]) == 0
    out = capsys.readouterr().out
    assert "bits/char" in out and "sample:" in out and ck.is_file()
    assert main(["sample", str(ck), "--length", "25", "--prime", "the"]) == 0
    assert len(capsys.readouterr().out.rstrip("\n")) >= 1


def test_sample_command_reports_a_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    assert main(["sample", str(bad)]) == 1
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "missing.npz")]) == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_train_command_refuses_bad_input(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.txt"), "--steps", "1", "--quiet"]) == 1
    assert "no text file" in capsys.readouterr().err
    assert main(["train", "--package", "no_such_package_here", "--quiet"]) == 1
    assert "no package" in capsys.readouterr().err
    assert main(["train", "--resume", "--checkpoint", str(tmp_path / "none.npz"),
                 "--steps", "1", "--quiet"]) == 1
    assert "no checkpoint" in capsys.readouterr().err
