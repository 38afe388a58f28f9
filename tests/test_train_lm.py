"""`rnnlab train lm` end to end on a tiny budget: outputs, bits/char, resume, errors."""
import json

import pytest
from rich.console import Console

from rnnlab.models import LM
from rnnlab.train.lm import LMConfig, run
from rnnlab.train.text import Vocab, load_text, stdlib_corpus


def quiet():
    return Console(file=open("/dev/null", "w"), width=120)


def tiny(out, **kw):
    return LMConfig(**{**dict(max_chars=20_000, d_model=16, n_layers=1, length=16, batch=4,
                              steps=6, minutes=5, eval_every=3, eval_windows=2, sample_chars=10,
                              out=str(out)), **kw})


def test_tiny_run_writes_everything_and_resumes(tmp_path):
    run(tiny(tmp_path, cell="mamba", conv=3), quiet())
    for name in ("metrics.json", "loss.png", "vocab.json", "checkpoint.safetensors",
                 "model/config.json", "model/model.safetensors"):
        assert (tmp_path / name).stat().st_size > 0, name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 6 and 0 < metrics["val_bpc"] < 10
    assert len(metrics["sample"]) == 40 + 10  # prompt + generated characters
    lm = LM.from_pretrained(tmp_path / "model")
    assert lm.vocab_size == len(Vocab.load(tmp_path / "vocab.json"))
    # a longer budget in the same folder continues from step 6 instead of starting over
    more = run(tiny(tmp_path, cell="mamba", conv=3, steps=9), quiet())
    assert more["steps"] == 9


def test_corpus_and_vocab(tmp_path):
    text, name = stdlib_corpus(5000)
    assert len(text) == 5000 and "python-stdlib" in name
    vocab = Vocab.from_text("hello world")
    assert vocab.decode(vocab.encode("hold")) == "hold"
    assert vocab.decode(vocab.encode("z")) == "\ufffd"  # unseen -> unknown
    (tmp_path / "small.txt").write_text("abc")
    with pytest.raises(ValueError, match="at least 1000"):
        load_text(tmp_path / "small.txt", 100)
    with pytest.raises(ValueError, match="neither a file nor a folder"):
        load_text(tmp_path / "missing.txt", 100)
