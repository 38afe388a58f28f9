"""`rnnlab train lm` end to end on a tiny budget: outputs, bits/char, resume, errors."""
import json

import pytest
import torch
from rich.console import Console

from rnnlab.models import LM
from rnnlab.tools.schedule import lr_at, warmup_cosine
from rnnlab.train.lm import LMConfig, run
from rnnlab.train.text import Vocab, load_text, stdlib_corpus, undecodable_share


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
    with pytest.raises(ValueError, match="expected a text file or a folder"):
        load_text(tmp_path / "missing.txt", 100)


# --- reliability (issue 12) ---------------------------------------------------------------

def tensors(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def snapshot(directory):
    """Every file under ``directory`` with its bytes (None when it does not exist)."""
    if not directory.exists():
        return None
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}


def same_run(metrics):
    """``metrics`` less what differs between two identical runs: times and the output path."""
    config = {k: v for k, v in metrics["config"].items() if k != "out"}
    return {**{k: v for k, v in metrics.items() if k != "train_seconds"}, "config": config}


def test_same_seed_gives_bit_identical_runs(tmp_path):
    # the learning rate depends on the step only: the clock (a generous time budget here)
    # must not change a single bit of the weights, the optimizer state or the metrics
    a = run(tiny(tmp_path / "a", steps=5, minutes=60), quiet())
    b = run(tiny(tmp_path / "b", steps=5, minutes=60), quiet())
    ta, tb = tensors(tmp_path / "a" / "checkpoint.safetensors"), \
        tensors(tmp_path / "b" / "checkpoint.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert same_run(ma) == same_run(mb) and a["val_bpc"] == b["val_bpc"]


def test_lr_is_a_function_of_the_step_only():
    assert lr_at(1.0, 0, 100) == warmup_cosine(1.0, 0.0)
    assert lr_at(1.0, 50, 100) == warmup_cosine(1.0, 0.5)
    assert [lr_at(1.0, s, 10) for s in range(10)] == [lr_at(1.0, s, 10) for s in range(10)]


def test_resume_with_other_data_or_settings_is_refused_before_any_write(tmp_path):
    out = tmp_path / "out"
    run(tiny(out, steps=3), quiet())
    before = snapshot(out)
    other = tmp_path / "other.txt"
    other.write_text("another corpus, other characters: ÆØÅ\n" * 100)
    with pytest.raises(ValueError, match=r"--out: .* holds a run with other settings \(data .*"
                                         r"use another --out"):
        run(tiny(out, steps=6, data=str(other)), quiet())
    with pytest.raises(ValueError, match=r"d_model 16 there, 32 now.*length 16 there, 8 now"):
        run(tiny(out, steps=6, d_model=32, length=8), quiet())
    assert snapshot(out) == before  # vocab.json included: it still matches the model
    assert run(tiny(out, steps=4), quiet())["steps"] == 4  # a raised budget resumes


def test_damaged_state_files(tmp_path):
    out = tmp_path / "out"
    run(tiny(out, steps=3), quiet())
    (out / "checkpoint.safetensors").write_bytes(b"garbage")
    console = Console(record=True, width=300, file=open("/dev/null", "w"))
    assert run(tiny(out, steps=3), console)["steps"] == 3
    assert "moved it to checkpoint.safetensors.corrupt and restarting" in console.export_text()
    assert (out / "checkpoint.safetensors.corrupt").read_bytes() == b"garbage"
    (out / "config.json").write_text('{"cell": "gr')
    with pytest.raises(ValueError, match=r"config.json is not a JSON object"):
        run(tiny(out, steps=3), quiet())
    (out / "vocab.json").write_text("[1, 2")
    with pytest.raises(ValueError, match=r"vocab.json is not a vocabulary written by rnnlab"):
        Vocab.load(out / "vocab.json")


def test_checkpoint_past_the_budget_is_refused_not_finished(tmp_path):
    run(tiny(tmp_path, steps=6), quiet())
    with pytest.raises(ValueError, match="step 6, past the step budget 3"):
        run(tiny(tmp_path, steps=3), quiet())


@pytest.mark.parametrize("change, match", [
    (dict(steps=0), r"--steps: expected an integer >= 1, got 0"),
    (dict(minutes=0), r"--minutes: expected a number > 0, got 0"),
    (dict(minutes=-1), r"--minutes: expected a number > 0, got -1"),
    (dict(minutes=float("nan")), r"--minutes: .* got nan"),
    (dict(lr=float("inf")), r"--lr: expected a finite number > 0, got inf"),
    (dict(n_layers=0), r"--layers: expected an integer >= 1, got 0"),
    (dict(d_model=2.5), r"--d-model: expected an integer, got 2.5"),
    (dict(seed=-1), r"--seed: expected an integer >= 0, got -1"),
    (dict(seed=2 ** 40), r"--seed: expected an integer <= 4294967295, got 1099511627776"),
    (dict(cell="gruu"), r"--cell: unknown cell 'gruu' \(did you mean 'gru'\?\)"),
    (dict(length=5000), r"--length: expected at most 249 .* got 5000"),
    (dict(device="cuda:99"), r"--device"),
    (dict(n_layers=10 ** 9), r"--d-model/--layers/--batch/--length: a training step needs"),
    (dict(data="/no/such/file"), r"--data: expected a text file or a folder"),
])
def test_bad_settings_are_refused_naming_the_option_with_nothing_written(tmp_path, change,
                                                                        match):
    text = tmp_path / "text.txt"
    text.write_text("some text to train on. " * 1000)
    with pytest.raises((ValueError, TypeError), match=match):
        run(tiny(tmp_path / "out", **{"data": str(text), **change}), quiet())
    assert not (tmp_path / "out").exists()


def test_a_second_writer_is_refused(tmp_path):
    from rnnlab.tools.files import directory_lock
    with directory_lock(tmp_path, "test"):
        with pytest.raises(ValueError, match="in use by another rnnlab process"):
            run(tiny(tmp_path), quiet())
    assert not (tmp_path / "config.json").exists()


def test_binary_data_gets_a_warning(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 40)
    console = Console(record=True, width=300, file=open("/dev/null", "w"))
    text, _ = load_text(data, 100_000)
    assert undecodable_share(text) > 0.3 and undecodable_share("plain text") == 0
    run(tiny(tmp_path / "out", data=str(data), steps=1), console)
    assert "does not look like text" in console.export_text()


def test_a_failed_model_save_keeps_the_previous_model(tmp_path, monkeypatch):
    from rnnlab.train import rundir
    run(tiny(tmp_path, steps=2), quiet())
    before = snapshot(tmp_path / "model")

    def full_disk(self, directory):
        (directory / "model.safetensors").parent.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(LM, "save_pretrained", full_disk)
    with pytest.raises(OSError):
        rundir.save_model(LM(5, 4, 1), tmp_path / "model")
    assert snapshot(tmp_path / "model") == before
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
