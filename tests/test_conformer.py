"""Streaming Conformer: the chunked mask by hand, streamed == offline (fp32 and fp64, several
chunk sizes), the mask is what the block computes (its Jacobian's pattern), gradients, bounded
caches, padding, argument errors, the spoken-digit data, CTC decoding, and the recipe end to end
through its CLI at toy size."""
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from rnnlab.models.conformer import Conformer, ConformerBlock, chunk_mask
from rnnlab.train import spoken_digits as sd
from rnnlab.train.conformer import edit_distance, error_rates, greedy
from rnnlab.train.conformer_cli import register


def small(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    options = dict(d_model=12, n_layers=2, heads=3, left_context=5, kernel=4, n_outputs=7)
    options.update(kw)
    return Conformer(6, **options).to(dtype).eval()


def stream(model, x, chunk):
    """``x`` fed ``chunk`` frames at a time from the zero state: (outputs, final state)."""
    state, outs = model.initial_state(x.shape[0]), []
    for start in range(0, x.shape[1], chunk):
        y, state = model.step(x[:, start:start + chunk], state)
        outs.append(y)
    return torch.cat(outs, 1), state


def test_chunk_mask_by_hand():
    # T=7, chunk 3, left 2: chunks {0,1,2}, {3,4,5}, {6}; a chunk sees itself and the 2 frames
    # before its first frame, never a later chunk
    want = torch.tensor([[1, 1, 1, 0, 0, 0, 0],
                         [1, 1, 1, 0, 0, 0, 0],
                         [1, 1, 1, 0, 0, 0, 0],
                         [0, 1, 1, 1, 1, 1, 0],
                         [0, 1, 1, 1, 1, 1, 0],
                         [0, 1, 1, 1, 1, 1, 0],
                         [0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(chunk_mask(7, 3, 2), want)
    assert torch.equal(chunk_mask(4, 1, 0), torch.eye(4, dtype=torch.bool))  # itself only
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.equal(chunk_mask(5, 1, 10), causal)  # chunk 1, long left context: causal
    band = causal & ~torch.ones(5, 5, dtype=torch.bool).tril(-2)
    assert torch.equal(chunk_mask(5, 1, 1), band)  # itself and one frame back


@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 13])
def test_streamed_equals_offline_fp32(chunk):
    model = small()
    x = torch.randn(2, 10, 6)  # chunks 3 and 4 do not divide T=10; 13 > T
    streamed, _ = stream(model, x, chunk)
    torch.testing.assert_close(streamed, model(x, chunk=chunk), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8])
def test_streamed_equals_offline_fp64(chunk):
    model = small(torch.float64, n_layers=3)
    x = torch.randn(3, 23, 6, dtype=torch.float64)
    streamed, _ = stream(model, x, chunk)
    assert (streamed - model(x, chunk=chunk)).abs().max() < 1e-10


def test_other_chunk_sizes_differ():
    """The check above can fail: streaming chunks of 2 is not the offline run with chunk 4."""
    model = small(torch.float64)
    x = torch.randn(1, 12, 6, dtype=torch.float64)
    assert (stream(model, x, 2)[0] - model(x, chunk=4)).abs().max() > 1e-4


def test_no_left_context_and_a_single_block():
    model = small(torch.float64, left_context=0)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    assert (stream(model, x, 2)[0] - model(x, chunk=2)).abs().max() < 1e-10
    torch.manual_seed(1)
    block = ConformerBlock(8, heads=2, left_context=3, kernel=3, chunk=2).double().eval()
    h = torch.randn(2, 9, 8, dtype=torch.float64)
    state, outs = block.initial_state(2), []
    for start in range(0, 9, 2):
        y, state = block.step(h[:, start:start + 2], state)
        outs.append(y)
    assert (torch.cat(outs, 1) - block(h)).abs().max() < 1e-10


@pytest.mark.parametrize("kernel", [1, 3])
def test_the_block_reads_exactly_the_mask(kernel):
    """Which inputs each output depends on (the Jacobian's pattern): with a pointwise conv
    (kernel 1) exactly the mask; a wider causal conv then mixes the attention outputs of the
    last ``kernel`` frames, so a frame reads the union of their mask rows."""
    torch.manual_seed(0)
    T, C, L = 9, 3, 2
    block = ConformerBlock(4, heads=2, left_context=L, kernel=kernel, chunk=C).double().eval()
    x = torch.randn(1, T, 4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: block(v), x)  # (1, T, 4, 1, T, 4)
    reads = jac[0, :, :, 0].abs().sum((1, 3)) > 0  # (T, T): output t reads input s
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    conv = ((t - s >= 0) & (t - s < kernel)).double()  # (T, T): frame t's conv window
    assert torch.equal(reads, conv @ chunk_mask(T, C, L).double() > 0)


def test_the_stack_never_reads_a_later_chunk():
    model = small(torch.float64, n_layers=3, chunk=4)
    x = torch.randn(1, 12, 6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model(v), x)  # (1, T, 7, 1, T, 6)
    reads = jac[0, :, :, 0].abs().sum((1, 3)) > 0  # (T, T)
    chunk_of = torch.arange(12) // 4
    later = chunk_of[None, :] > chunk_of[:, None]
    assert not reads[later].any()
    assert reads[~later & (torch.arange(12)[None, :] >= torch.arange(12)[:, None] - 5)].all()


def test_gradients_flow_and_match_offline():
    model = small(torch.float64)
    x = torch.randn(2, 11, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 11, 7, dtype=torch.float64)
    grads = []
    for run in (lambda: stream(model, x, 3)[0], lambda: model(x, chunk=3)):
        model.zero_grad()
        x.grad = None
        (run() * weights).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-10
    assert all(g.abs().sum() > 0 for g in grads[0])  # every parameter and the input
    # through the state: the second chunk's output depends on the first chunk's input
    x = torch.randn(1, 6, 6, dtype=torch.float64, requires_grad=True)
    y1, state = model.step(x[:, :3], model.initial_state(1))
    y2, _ = model.step(x[:, 3:], state)
    (grad,) = torch.autograd.grad(y2.sum(), x)
    assert grad[:, :3].abs().sum() > 0


def test_caches_stay_bounded():
    model = small(left_context=5, kernel=4)
    state = model.initial_state(2)
    x = torch.randn(2, 60, 6)
    for start in range(0, 60, 7):
        _, state = model.step(x[:, start:start + 7], state)
        for cache, conv, seen in state:
            assert cache.shape == (2, 5, 12) and conv.shape == (2, 3, 12)
            assert int(seen) == min(start + 7, 60)


def test_padding_is_never_read():
    model = small(torch.float64, chunk=3)
    x = torch.randn(3, 10, 6, dtype=torch.float64)
    lengths = torch.tensor([10, 7, 2])
    x[1, 7:], x[2, 2:] = 1e3, float("nan")  # padding: huge or NaN, it must not matter
    out = model(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = model(x[i:i + 1, :n])
        assert (out[i:i + 1, :n] - alone).abs().max() < 1e-10
        assert (stream(model, x[i:i + 1, :n], 3)[0] - alone).abs().max() < 1e-10


def test_argument_errors():
    with pytest.raises(ValueError, match=r"Conformer: heads must divide d_model=10, got heads=4"):
        Conformer(3, d_model=10, heads=4)
    with pytest.raises(ValueError, match=r"Conformer: left_context must be an int >= 0, got -1"):
        Conformer(3, left_context=-1)
    with pytest.raises(ValueError, match=r"Conformer: chunk must be an int >= 1, got 0"):
        Conformer(3, chunk=0)
    with pytest.raises(ValueError, match=r"ConformerBlock: kernel must be an int >= 1, got 0"):
        ConformerBlock(8, kernel=0)
    with pytest.raises(ValueError, match=r"Conformer: dropout must be in \[0, 1\), got 1.0"):
        Conformer(3, dropout=1.0)
    with pytest.raises(ValueError, match=r"chunk_mask: T must be an int >= 1, got 0"):
        chunk_mask(0, 2, 1)
    model = small()
    with pytest.raises(ValueError, match=r"Conformer: x must be \(B, T, 6\) with B, T >= 1, "
                                         r"got \(2, 5, 4\)"):
        model(torch.zeros(2, 5, 4))
    with pytest.raises(TypeError, match=r"Conformer: x must be a float tensor \(B, T, 6\), "
                                        r"got torch.int64"):
        model(torch.zeros(2, 5, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"Conformer: chunk must be an int >= 1, got 0"):
        model(torch.zeros(2, 5, 6), chunk=0)
    with pytest.raises(ValueError, match=r"Conformer: lengths must be in \[1, T=5\], "
                                         r"got min 0, max 5"):
        model(torch.zeros(2, 5, 6), torch.tensor([5, 0]))
    with pytest.raises(ValueError, match=r"Conformer: lengths must be an integer tensor \(B,\) "
                                         r"= \(2,\), got \(3,\)"):
        model(torch.zeros(2, 5, 6), torch.tensor([5, 5, 5]))
    with pytest.raises(ValueError, match=r"Conformer.step: state must hold one entry per layer "
                                         r"\(2\), as initial_state\(B\) makes it, got 1 entries"):
        model.step(torch.zeros(2, 3, 6), model.initial_state(2)[:1])
    with pytest.raises(ValueError, match=r"Conformer.step: state\[0\] must be \(cache "
                                         r"\(2, 5, 12\), conv \(2, 3, 12\), seen \(\)\) as "
                                         r"initial_state\(B=2\) makes it, got \[\(3, 5, 12\)"):
        model.step(torch.zeros(2, 3, 6), model.initial_state(3))
    with pytest.raises(ValueError, match=r"Conformer.step: x_chunk must be \(B, T, 6\) with "
                                         r"B, T >= 1, got \(2, 0, 6\)"):
        model.step(torch.zeros(2, 0, 6), model.initial_state(2))
    with pytest.raises(ValueError, match=r"Conformer.initial_state: batch must be an int >= 1"):
        model.initial_state(0)


def test_spoken_digits_batch():
    batch = sd.make_batch(5, torch.Generator().manual_seed(3), max_digits=3)
    again = sd.make_batch(5, torch.Generator().manual_seed(3), max_digits=3)
    assert torch.equal(batch["features"], again["features"])  # seeded
    B, T, F = batch["features"].shape
    assert (B, F) == (5, sd.N_MELS) and int(batch["lengths"].max()) == T
    assert batch["target_lengths"].min() >= 1 and batch["target_lengths"].max() <= 3
    for i in range(B):
        targets, n, frames = batch["targets"][i], batch["target_lengths"][i], batch["lengths"][i]
        assert ((targets[:n] >= 1) & (targets[:n] <= 10)).all() and (targets[n:] == 0).all()
        assert frames >= 2 * n  # room for CTC: a digit lasts at least 120 ms (3 frames)
        assert (batch["features"][i, frames:] == 0).all()  # zero padding
    assert len(set(sd.DIGITS)) == 10 and all(len(d) == 2 and d[0] != d[1] for d in sd.DIGITS)
    with pytest.raises(ValueError, match=r"make_batch: max_digits must be an int in \[1, 20\], "
                                         r"got 0"):
        sd.make_batch(2, torch.Generator(), max_digits=0)


def test_features_are_frame_local():
    """Frame t reads samples t*HOP .. t*HOP + N_FFT - 1 only: a prefix gives the first frames."""
    wave, _ = sd.utterance(torch.Generator().manual_seed(0), 2)
    full = sd.features(wave)
    prefix = sd.features(wave[:sd.N_FFT + 4 * sd.HOP])
    assert prefix.shape[0] == 5
    torch.testing.assert_close(prefix, full[:5])


def test_greedy_decoding_and_error_rates():
    logits = torch.full((7, 11), -9.0)
    for t, token in enumerate([0, 3, 3, 0, 3, 5, 5]):  # blank, 2, 2, blank, 2, 4, 4
        logits[t, token] = 0.0
    assert greedy(logits) == [2, 2, 4]
    assert edit_distance([1, 2, 3], [1, 3]) == 1 and edit_distance([], [4, 4]) == 2
    assert error_rates([[1, 2], [3]], [[1, 2], [4, 4]]) == {"token_error_rate": 0.5,
                                                            "utterance_error_rate": 0.5}


def app():
    train_app = typer.Typer()
    register(train_app)
    train_app.command("other")(lambda: None)  # a group, so the command is named
    return train_app


def test_cli_end_to_end_at_toy_size(tmp_path):
    runner = CliRunner()
    assert "--chunks" in runner.invoke(app(), ["conformer", "--help"]).output
    result = runner.invoke(app(), [
        "conformer", "--chunks", "1,3", "--d-model", "8", "--n-layers", "1", "--heads", "2",
        "--left-context", "4", "--kernel", "3", "--steps", "3", "--batch", "4",
        "--test-utterances", "3", "--max-digits", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "results.json").read_text())
    assert [r["chunk"] for r in report["results"]] == [1, 3]
    for r in report["results"]:
        assert r["identical_decodes"] == 1.0 and r["max_abs_logit_diff"] < 1e-4
        assert r["offline"] == r["streamed"] and r["latency_ms_per_chunk"]["calls"] > 0
    assert (tmp_path / "conformer.png").stat().st_size > 0


def test_cli_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app(), ["conformer", "--chunks", "0,2", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--chunks: expected comma-separated integers in [1, 256]" in result.output
    result = runner.invoke(app(), ["conformer", "--heads", "5", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "heads must divide d_model=64, got 5" in result.output
    assert not (tmp_path / "results.json").exists()
