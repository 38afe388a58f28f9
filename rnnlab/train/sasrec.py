"""SASRec recipe (Kang & McAuley 2018): next-item recommendation with a causal attention encoder,
and the same harness with recurrent encoders (GRU4Rec-style), on MovieLens-1M or a synthetic set
whose best achievable HR@10 is known.

Readable top to bottom:

- data: ``ratings.dat`` (``--data``) or the synthetic item-graph walks (``recsys_data``), split
  leave-one-out (last item test, second-last validation);
- training: at every position of a user's training items, the next item against one sampled
  negative (an item the user never trained on), binary cross-entropy, Adam;
- evaluation (``evaluate``): for each user, the model reads the history and scores the target
  against (a) 100 sampled negatives the user never saw (the paper's protocol, seeded, the same
  for every model) and (b) every item but the user's history (full ranking: sampled metrics are
  biased, Krichene & Rendle 2020). HR@10 is 1 when the target's 0-based rank is below 10,
  NDCG@10 is then 1 / log2(rank + 2). Ties rank against the target (a constant model scores 0);
- the model with the best validation NDCG@10 (sampled) is tested; on the synthetic set the
  generator's own probabilities (the Bayes-optimal ranker) go through the same evaluation, and
  its exact expected full-ranking HR@10 is reported as the ceiling.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from rich.console import Console

from ..models.block import check_mixer
from ..models.sasrec import SASRec
from ..tools.device import check_device
from ..tools.files import write_atomic
from . import options as _options
from . import recsys_data as data

PAPER = {"ML-1M": {"hr@10": 0.8245}, "Beauty": {"hr@10": 0.4854, "ndcg@10": 0.3219},
         "Games": {"hr@10": 0.7410, "ndcg@10": 0.5360}}  # SASRec, 100 sampled negatives


@dataclasses.dataclass
class SASRecConfig:
    data: Optional[str] = None  # ratings.dat path; None: the synthetic set
    encoders: List[str] = dataclasses.field(
        default_factory=lambda: ["attention", "gru", "gla"])
    users: int = 2000  # synthetic: users (walks)
    items: int = 1000  # synthetic: items
    length: int = 50  # synthetic: longest walk (lengths uniform in [length/2, length])
    degree: int = 12  # synthetic: successors per item
    noise: float = 0.1  # synthetic: probability of a jump to a random item
    max_len: int = 50  # items read per user (the last ones; the paper: 200 on ML-1M, else 50)
    d_model: int = 50  # embedding width (the paper's)
    n_layers: int = 2  # encoder blocks (the paper's)
    dropout: float = 0.2
    batch: int = 128
    lr: float = 1e-3
    epochs: int = 200  # most passes over the users per encoder
    minutes: float = 3.5  # time budget per encoder (0: none)
    eval_every: int = 5  # epochs between validations
    negatives: int = 100  # sampled negatives at evaluation (the paper's)
    seed: int = 0  # data, model init, sampling
    out: str = "results/sasrec"
    device: str = "cpu"


def check_config(cfg: SASRecConfig) -> None:
    """Raise naming the option for any value out of range, before anything is read."""
    for field in ("users", "length", "degree", "max_len", "d_model", "n_layers", "batch",
                  "epochs", "eval_every", "negatives"):
        _options.integer(cfg, field, 1)
    _options.integer(cfg, "items", 2)
    _options.integer(cfg, "seed", 0, _options.SEED_MAX)
    _options.number(cfg, "lr")
    _options.number(cfg, "noise", 0.0, strict=False, high=1.0)
    _options.number(cfg, "dropout", 0.0, strict=False, high=0.99)
    _options.number(cfg, "minutes", 0.0, strict=False, infinite=True)
    if cfg.data is not None and not Path(cfg.data).is_file():
        raise ValueError(f"--data: expected a ratings.dat file, got {cfg.data!r} (no such file)")
    if cfg.data is None and not cfg.degree < cfg.items:
        raise ValueError(f"--degree: expected an integer < --items ({cfg.items}), "
                         f"got {cfg.degree}")
    if cfg.data is None and not 3 <= cfg.length <= cfg.items:
        raise ValueError(f"--length: expected an integer in [3, --items ({cfg.items})], "
                         f"got {cfg.length}")
    if not cfg.encoders or len(set(cfg.encoders)) < len(cfg.encoders):
        raise ValueError(f"--encoders: expected a comma-separated list of distinct encoders, "
                         f"got {','.join(cfg.encoders) or 'none'}")
    for name in cfg.encoders:
        check_mixer(None, "--encoders", name)
    check_device(cfg.device)


# ---- metrics ------------------------------------------------------------------------------------

def rank_of(scores: np.ndarray, target: int, candidates: np.ndarray) -> int:
    """0-based rank of ``target`` among ``candidates`` (item ids, target excluded) by
    ``scores`` (indexed by item): the number of candidates scored at least as high."""
    return int((scores[candidates] >= scores[target]).sum())


def hit_ndcg(ranks: Sequence[int], k: int = 10) -> tuple:
    """(HR@k, NDCG@k) of 0-based ``ranks``: hit when rank < k, gain 1 / log2(rank + 2)."""
    ranks = np.asarray(ranks)
    hits = ranks < k
    return float(hits.mean()), float(np.where(hits, 1 / np.log2(ranks + 2), 0.0).mean())


def sampled_negatives(split: data.Split, stage: str, n_items: int, count: int,
                      seed: int) -> dict:
    """Per user of ``stage``: ``count`` distinct items outside the history and the target
    (seeded, so every model meets the same ones; fewer when fewer items are left)."""
    rng = np.random.default_rng(seed)
    out = {}
    targets = split.valid if stage == "valid" else split.test
    for user in split.users(stage):
        seen = np.array(split.history(user, stage) + [targets[user]])
        allowed = np.setdiff1d(np.arange(1, n_items + 1), seen)
        out[user] = rng.choice(allowed, min(count, len(allowed)), replace=False)
    return out


def evaluate(score_fn: Callable, split: data.Split, stage: str, n_items: int,
             negatives: dict, batch: int = 256) -> dict:
    """HR@10 / NDCG@10 of ``score_fn(histories) -> (B, n_items + 1)`` on ``stage``'s users,
    ranked among ``negatives`` (sampled) and among every item but the history (full)."""
    targets = split.valid if stage == "valid" else split.test
    users = split.users(stage)
    sampled, full = [], []
    for start in range(0, len(users), batch):
        chunk = users[start:start + batch]
        scores = score_fn([split.history(u, stage) for u in chunk]).double().cpu().numpy()
        for row, user in zip(scores, chunk):
            target = targets[user]
            sampled.append(rank_of(row, target, negatives[user]))
            others = np.ones(n_items + 1, dtype=bool)  # every item but padding, history, target
            others[[0, target, *split.history(user, stage)]] = False
            full.append(rank_of(row, target, np.flatnonzero(others)))
    hr_s, ndcg_s = hit_ndcg(sampled)
    hr_f, ndcg_f = hit_ndcg(full)
    return {"hr@10_sampled": round(hr_s, 4), "ndcg@10_sampled": round(ndcg_s, 4),
            "hr@10_full": round(hr_f, 4), "ndcg@10_full": round(ndcg_f, 4)}


# ---- training -----------------------------------------------------------------------------------

def pad_right(sequences: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """The last ``max_len`` items of each sequence, right-padded with 0: ``(B, T)``."""
    kept = [list(s)[-max_len:] for s in sequences]
    out = torch.zeros(len(kept), max(1, max(len(s) for s in kept)), dtype=torch.long)
    for i, s in enumerate(kept):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def train_negatives(positives: torch.Tensor, seen: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """One random item per position of ``positives (B, T)`` outside each user's ``seen (B, N + 1)``
    items (resampled until none is seen, up to 20 tries)."""
    n = seen.shape[1] - 1
    neg = torch.randint(1, n + 1, positives.shape, generator=generator)
    for _ in range(20):
        bad = seen.gather(1, neg)  # (B, T)
        if not bad.any():
            break
        neg = torch.where(bad, torch.randint(1, n + 1, positives.shape, generator=generator),
                          neg)
    return neg


def train_epoch(model: SASRec, optimizer, split: data.Split, users: List[int], cfg: SASRecConfig,
                generator: torch.Generator, device) -> float:
    """One pass over ``users`` in random order: BCE of next items against sampled negatives."""
    model.train()
    losses = []
    order = torch.randperm(len(users), generator=generator).tolist()
    for start in range(0, len(order), cfg.batch):
        chunk = [users[i] for i in order[start:start + cfg.batch]]
        seqs = [split.train[u][-(cfg.max_len + 1):] for u in chunk]
        inputs = pad_right([s[:-1] for s in seqs], cfg.max_len)  # (B, T)
        positives = pad_right([s[1:] for s in seqs], cfg.max_len)  # (B, T)
        seen = torch.zeros(len(chunk), model.n_items + 1, dtype=torch.bool)
        for i, u in enumerate(chunk):
            seen[i, split.train[u]] = True
        negatives = train_negatives(positives, seen, generator)
        inputs, positives, negatives = (t.to(device) for t in (inputs, positives, negatives))
        h = model.encode(inputs)  # (B, T, D)
        pos, neg = model.score(h, torch.stack([positives, negatives], -1)).unbind(-1)
        real = (positives != 0).float()
        loss = (torch.nn.functional.softplus(-pos) + torch.nn.functional.softplus(neg))
        loss = (loss * real).sum() / real.sum()  # -log sig(pos) - log(1 - sig(neg))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss of {model.encoder} became {loss.item()}; "
                                     f"lower --lr")
        losses.append(loss.item())
    return float(np.mean(losses))


def model_scores(model: SASRec, max_len: int, device) -> Callable:
    """``histories -> (B, n_items + 1)`` scores of every item after each history."""
    @torch.no_grad()
    def score(histories):
        model.eval()
        return model.score_all(model.last(pad_right(histories, max_len).to(device)))
    return score


def train_encoder(encoder: str, split: data.Split, n_items: int, cfg: SASRecConfig,
                  negatives: dict, console: Console) -> dict:
    """Train one encoder (best validation NDCG@10, sampled) and test it."""
    device = check_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = SASRec(n_items, cfg.d_model, cfg.n_layers, cfg.max_len, encoder,
                   dropout=cfg.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(cfg.seed)
    users = [u for u, items in enumerate(split.train) if len(items) >= 2]
    best, best_state, curve = -1.0, None, []
    start = time.perf_counter()
    budget = math.inf if cfg.minutes in (0, math.inf) else 60 * cfg.minutes
    epoch, done = 0, False
    while not done:  # the last epoch is always validated, so best_state is set
        loss = train_epoch(model, optimizer, split, users, cfg, generator, device)
        epoch += 1
        done = epoch >= cfg.epochs or time.perf_counter() - start >= budget
        if epoch % cfg.eval_every == 0 or done:
            valid = evaluate(model_scores(model, cfg.max_len, device), split, "valid", n_items,
                             negatives["valid"])
            curve.append({"epoch": epoch, "loss": round(loss, 4), **valid})
            console.print(f"  {encoder} epoch {epoch}: loss {loss:.4f}, valid NDCG@10 "
                          f"{valid['ndcg@10_sampled']:.4f} (sampled) "
                          f"{valid['ndcg@10_full']:.4f} (full)", markup=False)
            if valid["ndcg@10_sampled"] > best:
                best, best_state = valid["ndcg@10_sampled"], copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test = evaluate(model_scores(model, cfg.max_len, device), split, "test", n_items,
                    negatives["test"])
    return {"encoder": encoder, "params": sum(p.numel() for p in model.parameters()),
            "epochs": epoch, "seconds": round(time.perf_counter() - start, 1),
            "test": test, "curve": curve}


# ---- the recipe ---------------------------------------------------------------------------------

def load(cfg: SASRecConfig):
    """(interactions, graph or None, a description) of ``cfg``'s data."""
    if cfg.data is not None:
        inter = data.load_ratings(cfg.data)
        return inter, None, f"ratings file {cfg.data}"
    inter, graph = data.synthetic(cfg.users, cfg.items, cfg.length, cfg.degree, cfg.noise,
                                  cfg.seed)
    return inter, graph, (f"synthetic: {cfg.users} walks of {cfg.length // 2}-{cfg.length} "
                          f"items on {cfg.items} items, {cfg.degree} successors each, noise "
                          f"{cfg.noise}")


def run(cfg: SASRecConfig, console: Console) -> dict:
    """Train and test every encoder; write ``out/results.json`` and ``out/sasrec.png``."""
    check_config(cfg)
    start = time.perf_counter()
    inter, graph, described = load(cfg)
    split = data.leave_one_out(inter.sequences)
    if not split.users("test"):
        raise ValueError(f"--data: no user has 3 or more items in {cfg.data}")
    if not any(len(items) >= 2 for items in split.train):
        raise ValueError(f"--data: no user has 4 or more items in {cfg.data} (training needs "
                         f"two items before the validation and test ones)")
    negatives = {stage: sampled_negatives(split, stage, inter.n_items, cfg.negatives,
                                          cfg.seed + i) for i, stage in enumerate(("valid",
                                                                                   "test"))}
    console.print(f"SASRec: {described}; {len(inter.sequences)} users, {inter.n_items} items, "
                  f"{len(split.users('test'))} test users", markup=False)
    result = {"data": described, "users": len(inter.sequences), "items": inter.n_items,
              "config": dataclasses.asdict(cfg), "paper": PAPER}
    if graph is not None:
        oracle = evaluate(lambda h: data.oracle_scores(graph, h), split, "test", inter.n_items,
                          negatives["test"])
        result["oracle"] = {"best_hr@10_full_expected": round(data.best_hit_rate(graph, split),
                                                              4), **oracle}
        console.print(f"  Bayes-optimal ceiling: HR@10 (full, expected) "
                      f"{result['oracle']['best_hr@10_full_expected']:.4f}", markup=False)
    result["rows"] = [train_encoder(e, split, inter.n_items, cfg, negatives, console)
                      for e in cfg.encoders]
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps(result, indent=1))
    plot(result, out / "sasrec.png")
    print_table(result, console)
    console.print(f"wrote {out / 'results.json'} and {out / 'sasrec.png'}", markup=False)
    return result


def print_table(result: dict, console: Console) -> None:
    from rich.table import Table
    table = Table(title=f"test HR@10 / NDCG@10, {result['seconds']:.0f}s")
    for col in ("encoder", "HR@10 sampled", "NDCG@10 sampled", "HR@10 full", "NDCG@10 full",
                "epochs"):
        table.add_column(col, justify="left" if col == "encoder" else "right")
    rows = [(r["encoder"], r["test"], str(r["epochs"])) for r in result["rows"]]
    if "oracle" in result:
        rows.append(("Bayes-optimal", result["oracle"], ""))
    for name, t, epochs in rows:
        table.add_row(name, *(f"{t[k]:.4f}" for k in ("hr@10_sampled", "ndcg@10_sampled",
                                                      "hr@10_full", "ndcg@10_full")), epochs)
    console.print(table)


def plot(result: dict, path: Path) -> None:
    """Left: test metrics per encoder (and the Bayes-optimal ranker); right: validation
    NDCG@10 (sampled and full) over epochs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ("hr@10_sampled", "ndcg@10_sampled", "hr@10_full", "ndcg@10_full")
    rows = [(r["encoder"], r["test"]) for r in result["rows"]]
    if "oracle" in result:
        rows.append(("Bayes-optimal", result["oracle"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(rows)
    for i, (name, t) in enumerate(rows):
        left.bar(np.arange(len(keys)) + i * width, [t[k] for k in keys], width, label=name)
    left.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    left.set_xticklabels([k.replace("_", "\n") for k in keys])
    left.set_ylim(0, 1.18)  # room for the legend above the bars
    left.set_title("test (leave-one-out)")
    left.legend(fontsize=7, ncol=len(rows), loc="upper center")
    for r in result["rows"]:
        epochs = [c["epoch"] for c in r["curve"]]
        line, = right.plot(epochs, [c["ndcg@10_sampled"] for c in r["curve"]],
                           label=f"{r['encoder']} sampled")
        right.plot(epochs, [c["ndcg@10_full"] for c in r["curve"]], "--",
                   color=line.get_color(), label=f"{r['encoder']} full")
    right.set_xlabel("epoch")
    right.set_ylabel("validation NDCG@10")
    right.legend(fontsize=7)
    fig.suptitle(f"SASRec harness: {result['data']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
