"""LION: partition / serialise / scatter, bidirectional group scans, models, data, recipe."""
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from rnnlab.models.lion import (
    LION,
    GroupScan,
    PointNet,
    _pointnet_count,
    matched_pointnet,
    n_params,
    partition,
    reverse_within,
    scatter,
    serialise,
)
from rnnlab.train import point_clouds as pc
from rnnlab.train.lion import miou
from rnnlab.train.lion_cli import register


def _clouds(seed, B=3, N=37):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(B, N, 3, generator=g) * 2 - 1
    valid = torch.rand(B, N, generator=g) < 0.8
    valid[:, 0] = True
    return xyz, valid


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("seed,window", [(0, 1), (1, 3), (2, 50)])
def test_scatter_inverts_serialise(axis, seed, window):
    xyz, valid = _clouds(seed)
    part = partition(xyz, 0.25, window, axis, valid)
    f = torch.randn(3, 37, 5)
    back = scatter(serialise(f, part), part)
    assert torch.equal(back[valid], f[valid])
    assert torch.equal(back[~valid], torch.zeros_like(back[~valid]))
    # the other way round on the occupied slots: serialise ∘ scatter == identity
    g = serialise(f, part)
    assert torch.equal(serialise(scatter(g, part), part), g)
    assert int(part.lengths.sum()) == int(valid.sum())
    assert torch.equal(part.cu_seqlens[1:] - part.cu_seqlens[:-1], part.lengths)


def test_partition_hand_case():
    # one cloud, voxel 1, windows of 2×2 voxels; the minimum corner is (0, 0, 0)
    xyz = torch.tensor([[[3.5, 0.5, 0.0], [0.5, 1.5, 0.0], [1.5, 0.5, 0.0], [0.5, 0.5, 0.0],
                         [2.5, 0.5, 0.0]]])
    # voxels (3,0) (0,1) (1,0) (0,0) (2,0): window (0,0) holds points 1,2,3; window (1,0) 0,4
    x = partition(xyz, 1.0, 2, "x")
    assert x.lengths.tolist() == [3, 2]
    assert x.order.tolist() == [3, 1, 2, 4, 0]  # x-major: (0,0) (0,1) (1,0) | (2,0) (3,0)
    y = partition(xyz, 1.0, 2, "y")
    assert y.order.tolist() == [3, 2, 1, 4, 0]  # y-major: (0,0) (1,0) (0,1) | (2,0) (3,0)
    assert y.max_len == 3 and y.groups == 2


def test_empty_windows_make_no_group_and_groups_do_not_mix():
    # two tight clusters far apart: most windows between them are empty
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 10, 3, generator=g) * 0.1
    xyz = torch.cat([a, a + torch.tensor([5.0, 5.0, 0.0])], dim=1)  # (2, 20, 3)
    part = partition(xyz, 0.5, 2, "x")
    assert part.groups == 4  # 2 clouds × 2 occupied windows out of 36 each
    owner = part.order // 20
    cluster = (part.order % 20) // 10
    for k in range(part.groups):
        seg = slice(int(part.cu_seqlens[k]), int(part.cu_seqlens[k + 1]))
        assert owner[seg].unique().numel() == 1 and cluster[seg].unique().numel() == 1


def test_order_within_group_is_sorted_by_major_axis():
    xyz, _ = _clouds(4, B=1, N=200)
    part = partition(xyz, 0.1, 100, "y")  # one window: the whole cloud
    vox = ((xyz[0] - xyz[0].min(0).values) / 0.1).floor().long()[part.order]
    key = vox[:, 1] * 10**6 + vox[:, 0] * 10**3 + vox[:, 2]
    assert torch.all(key[1:] >= key[:-1])


def test_partition_errors_name_the_argument():
    xyz = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match="voxel"):
        partition(xyz, 0.0, 2)
    with pytest.raises(ValueError, match="window"):
        partition(xyz, 1.0, 0)
    with pytest.raises(ValueError, match="axis.*'z'"):
        partition(xyz, 1.0, 2, "z")
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        partition(torch.zeros(4, 3), 1.0, 2)


def test_reverse_within_hand_case():
    x = torch.arange(8.0).reshape(2, 4, 1)
    y = reverse_within(x, torch.tensor([3, 4]))
    assert y[..., 0].tolist() == [[2, 1, 0, 3], [7, 6, 5, 4]]


@pytest.mark.parametrize("cell", ["gla", "deltanet"])
def test_group_scan_equals_each_group_alone(cell):
    torch.manual_seed(0)
    scan = GroupScan(cell, 8)
    lengths = torch.tensor([5, 2, 7])
    x = torch.randn(3, 7, 8)
    y = scan(x, lengths)
    for g, n in enumerate(lengths.tolist()):
        alone = scan(x[g:g + 1, :n], torch.tensor([n]))
        assert torch.allclose(y[g, :n], alone[0], atol=1e-5)
    # the backward direction: the first output depends on the last input of its group
    x2 = x.clone()
    x2[0, 4] += 1.0
    assert not torch.allclose(scan(x2, lengths)[0, 0], y[0, 0])


def test_lion_logits_invariant_to_point_order_when_voxels_are_distinct():
    torch.manual_seed(0)
    model = LION("gla", d_model=8, layers=2, voxel=1e-3, window=200).eval()
    xyz = pc.make_clouds("segment", 2, 40, 0)["xyz"]
    perm = torch.randperm(40)
    logits, points = model(xyz)
    logits_p, points_p = model(xyz[:, perm])
    assert torch.allclose(logits, logits_p, atol=1e-5)
    assert torch.allclose(points[:, perm], points_p, atol=1e-5)


def test_pointnet_matched_count():
    for w in (4, 17, 64):
        assert n_params(PointNet(w, 3)) == _pointnet_count(w, 3)
    target = n_params(LION("mamba", d_model=16, layers=2))
    base = matched_pointnet(target)
    assert abs(n_params(base) - target) / target < 0.05


def test_shapes_lie_on_their_surfaces():
    import numpy as np
    rng = np.random.default_rng(0)
    sphere = pc.shape(0, 500, rng, 0.0)
    assert np.allclose(np.linalg.norm(sphere, axis=1), 1.0)
    cube = pc.shape(1, 500, rng, 0.0)
    assert np.allclose(np.abs(cube[:, 2]).max(), 1.0)
    torus = pc.shape(4, 500, rng, 0.0)
    ring = np.linalg.norm(torus[:, :2], axis=1)
    assert np.allclose((ring - 0.7) ** 2 + torus[:, 2] ** 2, 0.09, atol=1e-6)


def test_make_clouds_labels_and_seeding():
    a = pc.make_clouds("segment", 6, 33, 5)
    b = pc.make_clouds("segment", 6, 33, 5)
    assert torch.equal(a["xyz"], b["xyz"]) and a["xyz"].shape == (6, 33, 3)
    for labels in a["point_label"]:
        assert labels.unique().numel() == 2
    c = pc.make_clouds("classify", 20, 16, 1)
    assert torch.equal(c["point_label"], c["label"][:, None].expand(20, 16))
    assert c["label"].max() < len(pc.SHAPES)
    with pytest.raises(ValueError, match="task"):
        pc.make_clouds("detect", 1, 4, 0)


def test_miou_hand_case():
    pred = torch.tensor([0, 0, 1, 1])
    target = torch.tensor([0, 1, 1, 1])
    assert miou(pred, target, 3) == pytest.approx((1 / 2 + 2 / 3) / 2)


def _app():
    app, train = typer.Typer(), typer.Typer()
    register(train)
    app.add_typer(train, name="train")
    return app


def test_cli_help_and_toy_run(tmp_path):
    runner = CliRunner()
    assert "--timing-windows" in runner.invoke(_app(), ["train", "lion", "--help"]).output
    out = tmp_path / "lion"
    result = runner.invoke(_app(), ["train", "lion", "--models", "gla,pointnet", "--points", "24",
                                    "--steps", "2", "--batch", "4", "--train-clouds", "8",
                                    "--test-clouds", "6", "--d-model", "8",
                                    "--timing-windows", "1,20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"classify", "segment"}
    assert report["results"]["segment"]["pointnet"]["params"] > 0
    assert [r["window"] for r in report["timing"]["rows"]] == [1, 20]
    assert (out / "lion.png").exists()


def test_cli_bad_option_is_one_line_error(tmp_path):
    result = CliRunner().invoke(_app(), ["train", "lion", "--voxel", "0", "--out",
                                         str(tmp_path / "x")])
    assert result.exit_code != 0 and "voxel" in result.output
