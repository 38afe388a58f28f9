"""``rnnlab bench cells`` end to end at a tiny size: one row per (cell, supported engine),
ratios that agree with the times of the same run, failing rows kept. No timing assertions."""
import json

import pytest
import torch
from typer.testing import CliRunner

import rnnlab
from rnnlab.benchmarks import cells as bench
from rnnlab.benchmarks.memory import held_bytes
from rnnlab.cli import app
from rnnlab.errors import ConvergenceError

CELLS = ("gru", "mamba", "paragru")  # the reference, a linear cell, a Newton cell


def _invoke(tmp_path, *options):
    out = tmp_path / "bench" / "cells.json"
    result = CliRunner().invoke(app, ["bench", "cells", "--sizes", "2x9x8", "--repeats", "1",
                                      "--threads", "1", "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.output


def _supported(cell):
    """The engines that ``resolve`` accepts for the cell (what a user could build), and
    "auto" where it chooses per call; not Newton for a linear cell (a check, not a fast path)."""
    built, names = rnnlab.cells.get(cell, 8, 8), []
    linear = isinstance(built.structure, rnnlab.cells.Linear)
    for engine in rnnlab.engines.available():
        try:
            chosen = rnnlab.engines.resolve(engine, built)
        except ValueError:
            continue
        if not (linear and isinstance(chosen, rnnlab.engines.Newton)):
            names.append(engine)
    if isinstance(rnnlab.engines.resolve("auto", built), rnnlab.engines.Auto):
        names.append("auto")
    return names


def test_rows_ratios_and_memory(tmp_path):
    data, output = _invoke(tmp_path, "--cells", ",".join(CELLS))
    assert data["benchmark"] == "cells" and data["machine"]["threads"] == 1
    got = [(r["cell"], r["engine"]) for r in data["rows"]]
    expected = [(c, e) for c in CELLS for e in _supported(c)]
    assert sorted(got) == sorted(expected) and len(set(got)) == len(got)
    assert {("mamba", "scan"), ("paragru", "newton")} <= set(got)
    rows = {(r["cell"], r["engine"]): r for r in data["rows"]}
    for (cell, engine), r in rows.items():
        assert r["status"] == "ok", r
        assert (r["B"], r["T"], r["D"], r["size"]) == (2, 9, 8, "2x9x8")
        seq, gru = rows[(cell, "sequential")], rows[("gru", "sequential")]
        for kind in ("fwd", "fwdbwd"):
            t = r[f"{kind}_ms"]
            assert t > 0 and r[f"{kind}_runs"] == 1
            assert r[f"x_own_sequential_{kind}"] == pytest.approx(seq[f"{kind}_ms"] / t)
            assert r[f"x_gru_sequential_{kind}"] == pytest.approx(gru[f"{kind}_ms"] / t)
        if engine == "sequential":
            assert r["x_own_sequential_fwd"] == r["x_own_sequential_fwdbwd"] == 1.0
        assert r["saved_bytes"] > 0
        assert r["saved_bytes_per_token"] == pytest.approx(r["saved_bytes"] / (2 * 9))
        assert r["peak_bytes"] is None  # CPU
    assert rows[("paragru", "newton")]["iterations"] >= 1
    assert rows[("paragru", "auto")]["auto_picked"] == {"fwd": "sequential",
                                                         "fwdbwd": "sequential"}  # T = 9
    assert ("mamba", "auto") not in rows  # auto is the scan engine there: its own row
    assert rows[("gru", "sequential")]["x_gru_sequential_fwdbwd"] == 1.0
    assert "x own" in output and "paragru" in output and "wrote" in output


def test_failing_and_slow_rows_do_not_abort(tmp_path, monkeypatch):
    def diverge(self, *args, **kwargs):
        raise ConvergenceError("Newton: did not converge", [1.0, 2.0])

    monkeypatch.setattr(rnnlab.engines.Newton, "run_call", diverge)
    # a budget no call can meet: each measurement stops after its warm-up call
    data, output = _invoke(tmp_path, "--cells", "paragru", "--engines", "newton",
                           "--max-seconds", "1e-9")
    rows = {(r["cell"], r["engine"]): r for r in data["rows"]}
    assert set(rows) == {("gru", "sequential"), ("gru", "newton"), ("paragru", "sequential"),
                         ("paragru", "newton")}  # the GRU and sequential are always measured
    failed = rows[("paragru", "newton")]
    assert failed["status"] == "error" and "ConvergenceError" in failed["detail"]
    assert failed["fwdbwd_ms"] is None and failed["x_own_sequential_fwdbwd"] is None
    slow = rows[("paragru", "sequential")]
    assert slow["status"] == "over_budget" and slow["fwd_runs"] == slow["fwdbwd_runs"] == 0
    assert slow["fwdbwd_ms"] > 0 and slow["x_own_sequential_fwdbwd"] == 1.0
    assert "ConvergenceError" in output


@pytest.mark.parametrize("options, message", [
    (["--sizes", "2x9"], "--sizes"), (["--cells", "nope"], "--cells"),
    (["--engines", "magic"], "--engines"), (["--repeats", "0"], "--repeats")])
def test_bad_options(tmp_path, options, message):
    out = tmp_path / "cells.json"
    result = CliRunner().invoke(app, ["bench", "cells", "--out", str(out), *options])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists(), "nothing is written on bad input"


def test_held_bytes_counts_saved_storages_once():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=gen, requires_grad=True)
    w = torch.randn(3, 5, generator=gen, requires_grad=True)
    a = (x * w).exp()  # mul saves x and w (left out), exp saves its result a
    y = a.sin()  # sin saves its input a again: one storage
    assert held_bytes([y], [x, w]) == 2 * 15 * 4
    h = y[:, :2]  # a view of y: the same storage
    assert held_bytes([y, h], [x, w]) == 2 * 15 * 4
    assert bench.parse_sizes("8x1024x128, 2X3X4") == ((8, 1024, 128), (2, 3, 4))


def test_a_directory_as_out_is_refused_before_any_timing(tmp_path):
    result = CliRunner().invoke(app, ["bench", "cells", "--sizes", "2x5x4", "--cells", "gru",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--out: expected a JSON file path, got the directory" in result.output
    assert "gru" not in result.output  # nothing was measured
