"""LRCN: TimeDistributed == a loop over frames, streaming == one run, the clip generator's labels
and occluder, argument errors, and the recipe end to end through its CLI at toy size."""
import json

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("sklearn")

from rnnlab.models.lrcn import LRCN, FrameAverage, FrameEncoder, TimeDistributed  # noqa: E402
from rnnlab.train import moving_digits as md  # noqa: E402
from rnnlab.train.lrcn_cli import register  # noqa: E402

from .helpers import command_group


@pytest.fixture(scope="module")
def split():
    return md.load_split(0)


def toy_clips(split, n=6, seed=0, **kw):
    return md.make_clips(*split["train"], n, torch.Generator().manual_seed(seed), **kw)


def test_time_distributed_equals_a_loop_over_frames():
    torch.manual_seed(0)
    enc = FrameEncoder(12, 5, channels=3)
    x = torch.randn(2, 4, 12, 12)
    got = TimeDistributed(enc)(x)
    want = torch.stack([enc(x[:, t]) for t in range(4)], 1)
    assert got.shape == (2, 4, 5)
    torch.testing.assert_close(got, want)


def test_time_distributed_refuses_a_missing_time_axis():
    with pytest.raises(ValueError, match=r"TimeDistributed: x must be \(B, T, \.\.\.\).*\(3,\)"):
        TimeDistributed(torch.nn.Identity())(torch.zeros(3))


@pytest.mark.parametrize("cell", ["lstm", "mamba", "gru"])
def test_streaming_frame_by_frame_equals_the_full_run(cell):
    torch.manual_seed(0)
    model = LRCN(cell, 12, 3, d_model=6, channels=2, pooling="mean")
    clips = torch.rand(2, 5, 12, 12)
    state, steps = model.initial_state(2), []
    for t in range(5):
        logits, state = model.step(clips[:, t], state)
        steps.append(logits)
    streamed = torch.stack(steps, 1)
    torch.testing.assert_close(streamed, model.per_step(clips), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(clips), streamed.mean(1), atol=1e-5, rtol=1e-5)
    model.pooling = "last"
    torch.testing.assert_close(model(clips), streamed[:, -1], atol=1e-5, rtol=1e-5)


def test_frame_average_is_blind_to_frame_order():
    torch.manual_seed(0)
    model = FrameAverage(12, 4, d_model=5, channels=2)
    clips = torch.rand(2, 5, 12, 12)
    torch.testing.assert_close(model(clips), model(clips.flip(1)))


def test_lrcn_sees_frame_order():
    torch.manual_seed(0)
    model = LRCN("lstm", 12, 4, d_model=5, channels=2)
    clips = torch.rand(2, 5, 12, 12)
    assert (model(clips) - model(clips.flip(1))).abs().max() > 1e-4


def test_model_argument_errors():
    with pytest.raises(ValueError, match=r"LRCN: pooling must be one of \['last', 'mean'\], "
                                         r"got 'max'"):
        LRCN("lstm", 12, 3, pooling="max")
    with pytest.raises(ValueError, match=r"LRCN: clips must be \(B, T, 12, 12\), "
                                         r"got \(2, 3, 8, 8\)"):
        LRCN("lstm", 12, 3, d_model=4, channels=2)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"LRCN.step: frame must be \(B, 12, 12\), "
                                         r"got \(2, 1, 12, 12\)"):
        model = LRCN("lstm", 12, 3, d_model=4, channels=2)
        model.step(torch.zeros(2, 1, 12, 12), model.initial_state(2))
    with pytest.raises(ValueError, match=r"FrameEncoder: canvas must be an int >= 4, got 2"):
        FrameEncoder(2, 4)


@pytest.mark.parametrize("directions", [4, 8])
def test_direction_label_matches_the_centre_of_mass_motion(split, directions):
    c = toy_clips(split, n=20, directions=directions, occluded=0)
    frames = c["clips"]  # (n, T, S, S)
    idx = torch.arange(frames.shape[-1], dtype=torch.float32)
    mass = frames.sum((-2, -1))
    com = torch.stack([(frames.sum(-1) * idx).sum(-1), (frames.sum(-2) * idx).sum(-1)], -1) \
        / mass[..., None]  # (n, T, 2): (row, col)
    steps = com[:, 1:] - com[:, :-1]  # (n, T-1, 2)
    want = torch.tensor(md.DIRECTIONS[directions], dtype=torch.float32)[c["direction"]]
    torch.testing.assert_close(steps, want[:, None].expand_as(steps), atol=1e-4, rtol=0)


def test_clips_show_the_digit_image_at_its_corner(split):
    images, labels = split["train"]
    c = toy_clips(split, n=10, occluded=0)
    for i in range(10):
        r, col = c["corner"][i, 3].tolist()
        box = c["clips"][i, 3, r:r + 8, col:col + 8]
        matches = (images - box).abs().flatten(1).amax(1) == 0
        assert matches.any() and labels[matches][0] == c["digit"][i]
        assert c["clips"][i, 3].sum() == pytest.approx(box.sum().item())  # nothing else drawn


def test_occlusion_hides_the_digit_in_its_band_and_only_there(split):
    c = toy_clips(split, n=30, occluded=3, frames=8, canvas=16)
    hidden = c["hidden"]
    assert (hidden.sum(1) == 3).all()
    runs = (hidden[:, 1:].int() - hidden[:, :-1].int()).clamp(min=0).sum(1) + hidden[:, 0]
    assert (runs == 1).all()  # one consecutive band
    for i in range(30):
        for t in range(8):
            r, col = c["corner"][i, t].tolist()
            box = c["clips"][i, t, r:r + 8, col:col + 8]
            occluder = (box == md.OCCLUDER).all().item()
            assert occluder == bool(hidden[i, t])
    # a hidden frame is the same whatever the digit: the grey box alone
    i, t = hidden.nonzero()[0].tolist()
    r, col = c["corner"][i, t].tolist()
    blank = torch.zeros(16, 16)
    blank[r:r + 8, col:col + 8] = md.OCCLUDER
    torch.testing.assert_close(c["clips"][i, t], blank)


def test_generator_is_seeded_and_splits_are_disjoint(split):
    a, b = toy_clips(split, seed=3), toy_clips(split, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    train = {tuple(x.flatten().tolist()) for x in split["train"][0]}
    test_idx = md.load_split(0)["test"][0]
    assert len(train) > 1000 and len(test_idx) > 400
    # images are disjoint by index; identical pixel copies across the split would leak
    overlap = sum(tuple(x.flatten().tolist()) in train for x in test_idx)
    assert overlap <= 2


def test_generator_argument_errors(split):
    with pytest.raises(ValueError, match=r"moving digits: canvas must be an int >= 17, got 16"):
        toy_clips(split, frames=10, canvas=16)
    with pytest.raises(ValueError, match=r"moving digits: occluded must be an int in \[0, 9\], "
                                         r"got 10"):
        toy_clips(split, occluded=10)
    with pytest.raises(ValueError, match=r"moving digits: directions must be one of \[4, 8\], "
                                         r"got 6"):
        toy_clips(split, directions=6)


def test_missing_scikit_learn_is_named(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_sklearn(name, *args, **kw):
        if name.startswith("sklearn"):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        md.load_digits_images()


def cli():
    return command_group(register)


def test_cli_help_and_a_bad_option():
    result = CliRunner().invoke(cli(), ["lrcn", "--help"])
    assert result.exit_code == 0 and "--pooling" in result.output
    result = CliRunner().invoke(cli(), ["lrcn", "--models", "lstmm"])
    assert result.exit_code == 2 and "did you mean 'lstm'" in result.output


def test_recipe_end_to_end_at_toy_size(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli(), [
        "lrcn", "--models", "lstm,average", "--frames", "4", "--canvas", "12", "--occluded", "1",
        "--d-model", "8", "--steps", "4", "--batch", "8", "--test-clips", "16",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"direction", "identity"}
    for task in report["results"].values():
        assert set(task) == {"lstm", "average"}
        assert all(0 <= r["accuracy"] <= 1 for r in task.values())
    assert (out / "lrcn.png").stat().st_size > 1000
