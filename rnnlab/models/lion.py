"""LION-style point-cloud model (NeurIPS 2024): linear group RNNs over serialised windows.

Three pieces:

- ``partition(xyz, voxel, window, axis)``: voxelise the points (cube side ``voxel``), group them
  by ``window × window`` voxel windows in the x-y plane (one group per occupied window; empty
  windows make no group), and order each group's points x-major (``axis="x"``: by voxel x, then
  y, then z) or y-major. Points in one voxel keep their input order (stable sorts), so the
  order is a deterministic permutation. ``serialise`` gathers per-point features into a padded
  batch of groups ``(G, L, C)`` with ``lengths``; ``scatter`` is its exact inverse.
- ``GroupScan``: a bidirectional scan of a registered linear cell (mamba, gla, deltanet...)
  over the groups, one group = one sequence: a forward scan plus a scan of each group reversed
  within its own length, summed.
- ``LION`` (embedding, blocks that alternate x/y serialisation, max/mean pooled class head and a
  per-point head) and ``PointNet`` (a shared per-point MLP + max-pool; the baseline).

Why a padded batch: ``Recurrent`` and its engines take ``lengths`` (``(B, T)`` padded), not
``cu_seqlens``; the ops in ``rnnlab/ops/varlen.py`` do take ``cu_seqlens`` but the engines do
not pass it through. ``Partition.cu_seqlens`` is kept so a packed path can use it directly.

Simplifications against the paper: points (not voxel features) are the sequence elements; no 3D
sparse-conv descriptor before serialising, no zero-voxel generation, no window shifts.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch
from torch import nn

from ..checks import check_choice, check_int, check_number
from ..nn import Recurrent

AXES = ("x", "y")


@dataclasses.dataclass
class Partition:
    """Where each point goes. ``order[k]``: the flat point index (into ``B * N``) at serial
    position ``k``; ``slot[k]``: its place in the padded ``(G * max_len)`` groups; groups are
    ``cu_seqlens[g]:cu_seqlens[g + 1]`` of the serial order."""
    order: torch.Tensor  # (M,) long, M = number of valid points
    slot: torch.Tensor  # (M,) long
    group: torch.Tensor  # (M,) long: the group of serial position k
    lengths: torch.Tensor  # (G,) long, all >= 1
    cu_seqlens: torch.Tensor  # (G + 1,) long
    batch: int
    points: int
    max_len: int

    @property
    def groups(self) -> int:
        return int(self.lengths.numel())


def _stable_argsort(keys) -> torch.Tensor:
    """Lexicographic order of equal-length long vectors, most significant first."""
    order = torch.arange(keys[0].numel(), device=keys[0].device)
    for key in reversed(keys):  # least significant first, each sort stable
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def partition(xyz: torch.Tensor, voxel: float, window: int, axis: str = "x",
              valid: Optional[torch.Tensor] = None) -> Partition:
    """Group and order the points of ``xyz: (B, N, 3)``; ``valid: (B, N)`` bool drops points
    (clouds with fewer points than ``N``). Voxels are counted from each cloud's minimum corner."""
    if not isinstance(xyz, torch.Tensor) or xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"partition: xyz must be a (B, N, 3) tensor, got "
                         f"{tuple(xyz.shape) if isinstance(xyz, torch.Tensor) else type(xyz)}")
    check_number("partition", "voxel", voxel, 0, low_open=True)
    check_int("partition", "window", window, 1)
    check_choice("partition", "axis", axis, AXES)
    B, N, _ = xyz.shape
    if valid is None:
        valid = torch.ones(B, N, dtype=torch.bool, device=xyz.device)
    elif valid.shape != (B, N) or valid.dtype != torch.bool:
        raise ValueError(f"partition: valid must be a bool ({B}, {N}) tensor, got "
                         f"{valid.dtype} {tuple(valid.shape)}")
    big = torch.finfo(xyz.dtype).max
    low = torch.where(valid[..., None], xyz, big).amin(dim=1, keepdim=True)  # (B, 1, 3)
    vox = ((xyz - low) / voxel).floor().clamp_min(0).long()  # (B, N, 3)
    flat = valid.reshape(-1).nonzero().squeeze(1)  # (M,) indices into B * N
    vox = vox.reshape(B * N, 3)[flat]  # (M, 3)
    b = flat // N
    win = vox[:, :2] // window  # (M, 2)
    major, minor = (0, 1) if axis == "x" else (1, 0)
    order = _stable_argsort([b, win[:, major], win[:, minor], vox[:, major], vox[:, minor],
                             vox[:, 2]])
    keys = torch.stack([b, win[:, 0], win[:, 1]], dim=1)[order]  # (M, 3), grouped runs
    new = torch.ones(order.numel(), dtype=torch.bool, device=xyz.device)
    new[1:] = (keys[1:] != keys[:-1]).any(dim=1)
    group = new.long().cumsum(0) - 1  # (M,)
    lengths = torch.bincount(group)
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=xyz.device)
    cu[1:] = lengths.cumsum(0)
    max_len = int(lengths.max()) if lengths.numel() else 0
    position = torch.arange(order.numel(), device=xyz.device) - cu[group]
    return Partition(order=flat[order], slot=group * max_len + position, group=group,
                     lengths=lengths, cu_seqlens=cu, batch=B, points=N, max_len=max_len)


def serialise(features: torch.Tensor, part: Partition) -> torch.Tensor:
    """Per-point ``(B, N, C)`` -> padded groups ``(G, max_len, C)`` (zeros past each length)."""
    C = features.shape[-1]
    rows = features.reshape(part.batch * part.points, C)[part.order]  # (M, C) serial order
    out = features.new_zeros(part.groups * part.max_len, C)
    out[part.slot] = rows
    return out.reshape(part.groups, part.max_len, C)  # (G, L, C)


def scatter(groups: torch.Tensor, part: Partition) -> torch.Tensor:
    """Padded groups ``(G, max_len, C)`` -> per-point ``(B, N, C)``; dropped points get zeros."""
    C = groups.shape[-1]
    rows = groups.reshape(-1, C)[part.slot]  # (M, C)
    out = groups.new_zeros(part.batch * part.points, C)
    out[part.order] = rows
    return out.reshape(part.batch, part.points, C)


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each padded sequence ``(G, L, C)`` within its own length; padding stays put."""
    G, L, _ = x.shape
    t = torch.arange(L, device=x.device)[None, :]  # (1, L)
    src = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (G, L)
    return x.gather(1, src[..., None].expand_as(x))


class GroupScan(nn.Module):
    """Bidirectional scan of one linear cell over padded groups: ``forward + reversed``."""

    def __init__(self, cell: str, d_model: int, engine: str = "auto"):
        super().__init__()
        self.forward_rnn = Recurrent(cell, engine, input_size=d_model, hidden_size=d_model)
        self.backward_rnn = Recurrent(cell, engine, input_size=d_model, hidden_size=d_model)
        width = self.forward_rnn.output_size
        self.out = nn.Identity() if width == d_model else nn.Linear(width, d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        y_f, _ = self.forward_rnn(x, lengths=lengths)
        y_b, _ = self.backward_rnn(reverse_within(x, lengths), lengths=lengths)
        return self.out(y_f + reverse_within(y_b, lengths))


class LIONBlock(nn.Module):
    """Pre-norm residual: group scan in one serial order, then a per-point MLP."""

    def __init__(self, cell: str, d_model: int, axis: str):
        super().__init__()
        self.axis = axis
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.scan = GroupScan(cell, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(),
                                 nn.Linear(2 * d_model, d_model))

    def forward(self, h: torch.Tensor, part: Partition) -> torch.Tensor:
        groups = serialise(self.norm1(h), part)  # (G, L, D)
        h = h + scatter(self.scan(groups, part.lengths), part)  # (B, N, D)
        return h + self.mlp(self.norm2(h))


def _heads(d_model: int, n_classes: int, n_point_classes: int):
    cls = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.GELU(), nn.Linear(d_model, n_classes))
    seg = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.GELU(),
                        nn.Linear(d_model, n_point_classes))
    return cls, seg


class LION(nn.Module):
    """``logits, point_logits = model(xyz)``: ``(B, n_classes)`` and ``(B, N,
    n_point_classes)``. Blocks alternate x-major and y-major serialisation."""

    def __init__(self, cell: str = "mamba", d_model: int = 32, layers: int = 2,
                 voxel: float = 0.1, window: int = 5, n_classes: int = 5,
                 n_point_classes: int = 5):
        super().__init__()
        for name, value in (("d_model", d_model), ("layers", layers), ("window", window),
                            ("n_classes", n_classes), ("n_point_classes", n_point_classes)):
            check_int("LION", name, value, 1)
        check_number("LION", "voxel", voxel, 0, low_open=True)
        self.voxel, self.window = voxel, window
        self.embed = nn.Sequential(nn.Linear(3, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.blocks = nn.ModuleList(LIONBlock(cell, d_model, AXES[i % 2]) for i in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.cls_head, self.seg_head = _heads(d_model, n_classes, n_point_classes)

    def partitions(self, xyz: torch.Tensor) -> dict:
        return {axis: partition(xyz, self.voxel, self.window, axis) for axis in AXES}

    def forward(self, xyz: torch.Tensor, parts: Optional[dict] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        parts = parts if parts is not None else self.partitions(xyz)
        h = self.embed(xyz - xyz.mean(dim=1, keepdim=True))  # (B, N, D)
        for block in self.blocks:
            h = block(h, parts[block.axis])
        h = self.norm(h)
        pooled = torch.cat([h.max(dim=1).values, h.mean(dim=1)], dim=-1)  # (B, 2D)
        return self.cls_head(pooled), _point_logits(self.seg_head, h, h.max(dim=1).values)


def _point_logits(head: nn.Module, h: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
    """Each point's feature beside the cloud's global feature (as PointNet's segmentation)."""
    return head(torch.cat([h, glob[:, None].expand_as(h)], dim=-1))  # (B, N, classes)


class PointNet(nn.Module):
    """The baseline: a shared per-point MLP (``depth`` layers of ``width``), max-pooled; same
    heads as ``LION``. No neighbourhood information, only the global max-pool."""

    def __init__(self, width: int = 64, depth: int = 3, n_classes: int = 5,
                 n_point_classes: int = 5):
        super().__init__()
        for name, value in (("width", width), ("depth", depth), ("n_classes", n_classes),
                            ("n_point_classes", n_point_classes)):
            check_int("PointNet", name, value, 1)
        dims = [3] + [width] * depth
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.GELU()]
        self.mlp = nn.Sequential(*layers)
        self.cls_head, self.seg_head = _heads(width, n_classes, n_point_classes)

    def forward(self, xyz: torch.Tensor, parts=None) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.mlp(xyz - xyz.mean(dim=1, keepdim=True))  # (B, N, W)
        pooled = torch.cat([h.max(dim=1).values, h.mean(dim=1)], dim=-1)  # (B, 2W)
        return self.cls_head(pooled), _point_logits(self.seg_head, h, h.max(dim=1).values)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_pointnet(target: int, depth: int = 3, **kwargs) -> PointNet:
    """The ``PointNet`` whose parameter count is closest to ``target`` (searching the width)."""
    check_int("matched_pointnet", "target", target, 1)
    best = min(range(4, 1025), key=lambda w: abs(_pointnet_count(w, depth, **kwargs) - target))
    return PointNet(best, depth, **kwargs)


def _pointnet_count(width: int, depth: int, n_classes: int = 5, n_point_classes: int = 5
                    ) -> int:
    mlp = (3 * width + width) + (depth - 1) * (width * width + width) + depth * 2 * width
    head = 2 * width * width + width
    return mlp + 2 * head + (width + 1) * (n_classes + n_point_classes)
