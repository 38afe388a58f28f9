"""Streaming Conformer recipe: CTC on synthetic spoken digits, decoded offline and streamed.

Readable top to bottom: every setting is checked before anything is written; one
``models.conformer.Conformer`` is trained with torch's CTC loss on fresh utterances from
``spoken_digits`` (blank + 10 digit tokens), each batch under an attention chunk drawn from
``chunks`` (NeMo's multi-lookahead training: one model serves every chunk size). Then for each
chunk size C in ``chunks``, the fixed test utterances are decoded greedily twice:

- offline: the whole padded batch at once under the chunked mask (``forward(x, lengths, C)``);
- streamed: each utterance alone (batch 1, a streaming client), ``step`` on C frames at a time
  from ``initial_state(1)``; every ``step`` call is timed (``time.perf_counter``).

Reported per C: token error rate (edit distance / reference tokens) and utterance error rate
both ways, the share of identical decodes and the largest logit difference (the streaming
equivalence, which must hold), and the measured compute latency per chunk (mean, median, p90 ms;
on a shared CPU these are what this run measured, nothing more), beside the chunk's duration
(C x 32 ms: the look-ahead a frame may wait for). Results go to ``out/results.json``, the
figure to ``out/conformer.png``.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List

import torch

from ..checks import check_int, check_number
from ..tools.device import check_device
from ..tools.files import write_atomic
from . import spoken_digits as sd
from .loop import train_steps

FRAME_MS = 1000 * sd.HOP / sd.SAMPLE_RATE  # 32 ms per feature frame


@dataclasses.dataclass
class ConformerConfig:
    d_model: int = 64  # block width
    n_layers: int = 3  # Conformer blocks
    heads: int = 4  # attention heads
    left_context: int = 16  # L: frames before its chunk a frame attends to (512 ms)
    kernel: int = 9  # causal depthwise conv width K
    chunks: List[int] = dataclasses.field(  # attention chunk sizes C: trained (one drawn per
        default_factory=lambda: [1, 2, 4, 8])  # batch) and each evaluated offline and streamed
    dropout: float = 0.0  # dropout in the feed-forward, attention and conv modules
    steps: int = 1000  # optimizer steps
    batch: int = 32  # utterances per step
    lr: float = 2e-3  # AdamW peak learning rate (cosine decay)
    max_digits: int = 5  # digits per utterance: 1..max_digits
    snr_low: float = sd.SNR[0]  # noise: SNR per utterance in [snr_low, snr_high] dB
    snr_high: float = sd.SNR[1]
    test_utterances: int = 200  # fixed test utterances (a separate seed)
    seed: int = 0  # model init, training stream and test set
    out: str = "results/conformer"  # results.json and conformer.png
    device: str = "cpu"  # torch device (streaming is timed on it)


def check(cfg: ConformerConfig) -> torch.device:
    """Every setting, each error naming its field, before anything is written."""
    owner = "ConformerConfig"
    for field in ("d_model", "n_layers", "heads", "kernel", "steps", "batch", "test_utterances"):
        check_int(owner, field, getattr(cfg, field), 1)
    check_int(owner, "left_context", cfg.left_context, 0)
    check_int(owner, "seed", cfg.seed, 0)
    if cfg.d_model % cfg.heads:
        raise ValueError(f"{owner}: heads must divide d_model={cfg.d_model}, got {cfg.heads}")
    if not isinstance(cfg.chunks, (list, tuple)) or not cfg.chunks:
        raise ValueError(f"{owner}: chunks must be a non-empty list of chunk sizes, "
                         f"got {cfg.chunks!r}")
    for c in cfg.chunks:
        check_int(owner, "chunks", c, 1, 256)
    check_number(owner, "dropout", cfg.dropout, 0, 1, high_open=True)
    check_number(owner, "lr", cfg.lr, 0, 1, low_open=True)
    sd.check_sizes(owner, cfg.max_digits, cfg.snr_low, cfg.snr_high)
    return check_device(cfg.device)


def build_model(cfg: ConformerConfig):
    from ..models.conformer import Conformer
    return Conformer(sd.N_MELS, cfg.d_model, cfg.n_layers, cfg.heads, cfg.left_context,
                     cfg.chunks[0], cfg.kernel, dropout=cfg.dropout, n_outputs=11)


def ctc_loss(model, batch: Dict[str, torch.Tensor], chunk: int, device) -> torch.Tensor:
    logits = model(batch["features"].to(device), batch["lengths"].to(device), chunk)  # (B, T, 11)
    log_probs = logits.log_softmax(-1).transpose(0, 1)  # (T, B, 11): ctc_loss's layout
    return torch.nn.functional.ctc_loss(log_probs, batch["targets"].to(device),
                                        batch["lengths"].to(device),
                                        batch["target_lengths"].to(device), blank=sd.BLANK,
                                        zero_infinity=True)


def greedy(logits: torch.Tensor) -> List[int]:
    """CTC greedy decoding of one utterance's ``logits (T, 11)``: argmax, merge repeats, drop
    blanks -> digits."""
    best = logits.argmax(-1).tolist()
    return [b - 1 for i, b in enumerate(best) if b != sd.BLANK and (i == 0 or b != best[i - 1])]


def edit_distance(a: List[int], b: List[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def error_rates(decodes: List[List[int]], refs: List[List[int]]) -> Dict[str, float]:
    edits = sum(edit_distance(d, r) for d, r in zip(decodes, refs))
    return {"token_error_rate": edits / sum(len(r) for r in refs),
            "utterance_error_rate": sum(d != r for d, r in zip(decodes, refs)) / len(refs)}


@torch.no_grad()
def offline_logits(model, test: Dict[str, torch.Tensor], chunk: int, device) -> List[torch.Tensor]:
    out = []
    for i in range(0, test["features"].shape[0], 64):
        x, lengths = test["features"][i:i + 64].to(device), test["lengths"][i:i + 64]
        logits = model(x, lengths.to(device), chunk).cpu()  # (b, T, 11)
        out += [row[:n] for row, n in zip(logits, lengths.tolist())]
    return out


@torch.no_grad()
def streamed_logits(model, test: Dict[str, torch.Tensor], chunk: int, device):
    """Each utterance streamed alone, ``chunk`` frames per ``step``: (logits per utterance,
    seconds per step call)."""
    out, seconds = [], []
    for x, n in zip(test["features"], test["lengths"].tolist()):
        x, state, pieces = x[None, :n].to(device), model.initial_state(1, device), []
        for start in range(0, n, chunk):
            tick = time.perf_counter()
            y, state = model.step(x[:, start:start + chunk], state)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - tick)
            pieces.append(y[0].cpu())
        out.append(torch.cat(pieces))  # (n, 11)
    return out, seconds


def evaluate_chunk(model, test, refs, chunk: int, device) -> dict:
    """Offline vs streamed decoding at one chunk size, with the streaming latency."""
    offline = offline_logits(model, test, chunk, device)
    streamed, seconds = streamed_logits(model, test, chunk, device)
    dec_off, dec_on = [greedy(z) for z in offline], [greedy(z) for z in streamed]
    ms = sorted(1000 * s for s in seconds)
    return {"chunk": chunk, "chunk_ms": chunk * FRAME_MS,
            "offline": error_rates(dec_off, refs), "streamed": error_rates(dec_on, refs),
            "identical_decodes": sum(a == b for a, b in zip(dec_off, dec_on)) / len(refs),
            "max_abs_logit_diff": max(float((a - b).abs().max())
                                      for a, b in zip(offline, streamed)),
            "latency_ms_per_chunk": {"mean": statistics.fmean(ms), "median": ms[len(ms) // 2],
                                     "p90": ms[int(0.9 * (len(ms) - 1))], "calls": len(ms)},
            "real_time_factor": statistics.fmean(ms) / (chunk * FRAME_MS)}  # compute / audio


def run(cfg: ConformerConfig, console=None) -> dict:
    """Train, then evaluate every chunk size; write ``results.json`` and ``conformer.png``."""
    device = check(cfg)
    say = console.print if console is not None else (lambda *a, **k: None)
    out = Path(cfg.out)
    started = time.perf_counter()
    test = sd.make_batch(cfg.test_utterances, torch.Generator().manual_seed(cfg.seed + 10_000),
                         cfg.max_digits, cfg.snr_low, cfg.snr_high)
    refs = [(t[:n] - 1).tolist() for t, n in zip(test["targets"], test["target_lengths"])]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    stream = torch.Generator().manual_seed(cfg.seed + 1)

    def next_loss():
        chunk = cfg.chunks[int(torch.randint(len(cfg.chunks), (), generator=stream))]
        return ctc_loss(model, sd.make_batch(cfg.batch, stream, cfg.max_digits, cfg.snr_low,
                                                   cfg.snr_high), chunk, device)

    losses, train_seconds = train_steps(model, opt, cfg.steps, cfg.lr, next_loss,
                                        "conformer on spoken digits")
    say(f"trained {cfg.steps} steps in {train_seconds:.0f} s, final loss "
        f"{statistics.fmean(losses[-20:]):.3f}")
    model.eval()
    results = []
    for chunk in cfg.chunks:
        r = evaluate_chunk(model, test, refs, chunk, device)
        results.append(r)
        say(f"chunk {chunk:3d} ({r['chunk_ms']:.0f} ms): TER offline "
            f"{r['offline']['token_error_rate']:.4f} streamed "
            f"{r['streamed']['token_error_rate']:.4f}, identical decodes "
            f"{r['identical_decodes']:.3f}, max |logit diff| {r['max_abs_logit_diff']:.1e}, "
            f"{r['latency_ms_per_chunk']['median']:.2f} ms per chunk (median)")
    report = {"config": dataclasses.asdict(cfg), "results": results,
              "parameters": sum(p.numel() for p in model.parameters()),
              "loss_curve": losses[::max(1, len(losses) // 100)],
              "final_loss": statistics.fmean(losses[-20:]), "frame_ms": FRAME_MS,
              "test_frames": int(test["lengths"].sum()),
              "train_seconds": round(train_seconds, 1),
              "wall_seconds": round(time.perf_counter() - started, 1),
              "torch_threads": torch.get_num_threads()}
    write_atomic(out / "results.json", json.dumps(report, indent=2) + "\n")
    i = next((k for k, r in enumerate(refs) if len(r) >= 3), 0)  # an example of 3+ digits
    one = {k: v[i:i + 1] for k, v in test.items()}
    examples = {c: offline_logits(model, one, c, device)[0] for c in (min(cfg.chunks),
                                                                       max(cfg.chunks))}
    figure(report, test["features"][i, :int(test["lengths"][i])], examples, refs[i],
           out / "conformer.png")
    say(f"results in {out / 'results.json'}, figure {out / 'conformer.png'}")
    return report


def figure(report: dict, feats: torch.Tensor, examples: Dict[int, torch.Tensor], ref: List[int],
           path: Path) -> None:
    """The chunked mask (a small case), one test utterance with its CTC posteriors at the
    smallest and largest chunk (``examples``: chunk -> logits (T, 11)), and the error rates
    (offline vs streamed) with the measured latency per chunk size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..models.conformer import chunk_mask

    fig = plt.figure(figsize=(12, 3.8))
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 2, 1.6], height_ratios=[1, 1])
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(chunk_mask(16, 4, 4).numpy(), cmap="Blues", vmin=0, vmax=1.3)
    ax.set_title("mask: chunk C=4, left L=4", fontsize=9)
    ax.set_xlabel("key frame")
    ax.set_ylabel("query frame")
    ax = fig.add_subplot(grid[0, 1])
    ax.imshow(feats.T.numpy(), aspect="auto", origin="lower", cmap="magma")
    ax.set_title(f"a test utterance, digits {ref}: log-mel features, CTC posteriors", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax = fig.add_subplot(grid[1, 1])
    for (chunk, logits), style in zip(examples.items(), ("-", "--")):
        probs = logits.softmax(-1)  # (T, 11)
        for k, d in enumerate(sorted(set(ref))):
            ax.plot(probs[:, d + 1].numpy(), style, lw=1.2, color=f"C{k}",
                    label=f"{d} (C={chunk})")
    ax.set_xlim(-0.5, feats.shape[0] - 0.5)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(f"frame ({FRAME_MS:.0f} ms)")
    ax.set_ylabel("p(digit)", fontsize=8)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), title="digit (chunk)",
              title_fontsize=6)
    ax = fig.add_subplot(grid[:, 2])
    rows = report["results"]
    xs = range(len(rows))
    for k, mode in enumerate(("offline", "streamed")):
        ter = [100 * r[mode]["token_error_rate"] for r in rows]
        bars = ax.bar([x + (k - 0.5) * 0.38 for x in xs], ter, 0.38, label=f"TER {mode}")
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"C={r['chunk']}\n{r['chunk_ms']:.0f} ms" for r in rows], fontsize=7)
    ax.set_ylabel("token error rate (%)")
    twin = ax.twinx()
    twin.plot(list(xs), [r["latency_ms_per_chunk"]["median"] for r in rows], "k.-",
              label="compute per chunk (median ms)")
    twin.set_ylabel("measured ms per chunk (shared CPU)", fontsize=8)
    twin.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=6, loc="lower left")
    ax.set_title("offline vs streamed, per chunk size", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
