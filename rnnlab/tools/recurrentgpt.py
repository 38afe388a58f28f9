"""RecurrentGPT (Zhou et al. 2023): a recurrence whose state is text, run by a text generator.

    rgpt = RecurrentGPT(generator)                 # any ``prompt -> text`` callable
    state = rgpt.initial_state("A lighthouse keeper finds a map.")
    out, state = rgpt.step(None, state)            # None: the first proposed plan
    out, state = rgpt.step(2, state)               # the third proposed plan
    out, state = rgpt.step("Go north.", state)     # a plan of one's own

The state (``State``) is the paper's: a short-term memory (a summary, rewritten every step),
a long-term memory (every paragraph written, searched by embedding with the plan: the ``top_k``
most similar are recalled), the last paragraph, and the plans proposed for the next one. A step
picks the plan (its input), assembles the prompt (``render_prompt``), calls the generator,
parses its text into (paragraph, new short-term memory, next plans) (``parse``), and returns
``(Output, new State)``. The step is pure when the generator is (``CharLMGenerator`` seeds its
sampling from the prompt, so the same state and input give the same step).

A small LM does not follow a format, so ``parse`` falls back and says so (``Parsed.fallbacks``):
the prompt ends with ``Paragraph:``, so text before any header is the paragraph (ending at its
last sentence end when that keeps more than half: a length cap stops mid-sentence); a missing
memory becomes an extractive one (the old memory and the paragraph's first sentence, cut to a
quarter of ``memory_chars``; its last ``memory_chars`` characters kept); missing plans become
one plan, to continue from the paragraph's last words.
"""
from __future__ import annotations

import dataclasses
import json
import re
import zlib
from pathlib import Path
from typing import Optional, Protocol, Tuple, Union

from ..checks import check_int, check_number
from .recurrentgpt_memory import Embedder, HashingEmbedder, LongTermMemory, Recall

# A header line: "Paragraph:", "Output Memory:", "## Plan 2:", "Instruction 1 -", "Summary:".
HEADER = re.compile(r"^[ \t#*_>-]*(?:output\s+|new\s+|next\s+|updated\s+)?"
                    r"(paragraph|memory|summary|plans?|instructions?)"
                    r"(?:\s*\d+[*_]*\s*[:.)-]|[*_]*\s*:|\s+-\s)",  # "Plan 2." yes, "Memory." no
                    re.IGNORECASE | re.MULTILINE)
KINDS = {"paragraph": "paragraph", "memory": "memory", "summary": "memory"}  # others: plan
BULLET = re.compile(r"^\s*(?:\d+[.):]|[-*])\s+", re.MULTILINE)  # "1. ", "2) ", "- "
SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")  # and the unknown-character mark


class TextGenerator(Protocol):
    """What RecurrentGPT needs of a language model: a continuation of a prompt."""

    def __call__(self, prompt: str) -> str: ...


@dataclasses.dataclass(frozen=True)
class State:
    short_memory: str  # summary of the recent paragraphs, rewritten each step
    long_memory: LongTermMemory  # every paragraph written, with embeddings
    last_paragraph: str  # the previous step's paragraph ("" before the first)
    plans: Tuple[str, ...]  # plans proposed for the next paragraph; the step's input picks one
    step: int = 0  # paragraphs written


@dataclasses.dataclass(frozen=True)
class Parsed:
    paragraph: str
    memory: str
    plans: Tuple[str, ...]
    fallbacks: Tuple[str, ...]  # what was missing and what stood in for it


@dataclasses.dataclass(frozen=True)
class Output:
    plan: str  # the plan this step followed
    recalled: Tuple[Recall, ...]  # long-term memories put in the prompt, best first
    prompt: str
    raw: str  # the generator's text
    parsed: Parsed

    @property
    def paragraph(self) -> str:
        return self.parsed.paragraph


# --- text helpers ---------------------------------------------------------------------------
def clean(text: str) -> str:
    """No control characters, single spaces."""
    return " ".join(CONTROL.sub(" ", text).split())


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters: at its last sentence end when that keeps
    more than half, else at a word boundary."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    ends = [m.end() for m in SENTENCE_END.finditer(head)]
    if ends and ends[-1] > limit // 2:
        return head[:ends[-1]]
    cut = head.rfind(" ")
    return head[:cut] if cut > limit // 2 else head


def whole_sentences(text: str) -> str:
    """``text`` up to its last sentence end when that keeps more than half of it (a generator
    stopped by a length cap ends mid-sentence), else all of it."""
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    return text[:ends[-1]] if ends and ends[-1] > len(text) // 2 else text


def sentences(text: str) -> list:
    parts, start = [], 0
    for m in SENTENCE_END.finditer(text):
        parts.append(text[start:m.end()].strip())
        start = m.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def tail(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text``, starting at a word."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    space = cut.find(" ")
    return cut[space + 1:] if 0 <= space < limit // 2 else cut


# --- prompt and parser ----------------------------------------------------------------------
def render_prompt(state: State, plan: str, recalled: Tuple[Recall, ...], n_plans: int) -> str:
    """The generator's input: the state in labelled sections, the output format asked for, and
    ``Paragraph:`` last, so a plain continuation model starts writing the paragraph."""
    related = "\n".join(f"{i + 1}. {r.text}" for i, r in enumerate(recalled)) or "(none yet)"
    plan_lines = "\n".join(f"Plan {i + 1}: <what the next paragraph should do>"
                           for i in range(n_plans))
    return (f"We are writing a long story one paragraph at a time.\n"
            f"Memory (a summary of the story so far): {state.short_memory or '(empty)'}\n"
            f"Related earlier paragraphs:\n{related}\n"
            f"Previous paragraph: {state.last_paragraph or '(none: the story begins)'}\n"
            f"Plan for this paragraph: {plan}\n\n"
            f"Write the next paragraph following the plan, then the updated memory, then "
            f"{n_plans} different plans for the paragraph after it, in this form:\n"
            f"Paragraph: <the paragraph>\nMemory: <the updated summary>\n{plan_lines}\n\n"
            f"Paragraph:")


def _sections(text: str):
    """``(preamble, [(kind, body), ...])`` split at header lines."""
    matches = list(HEADER.finditer(text))
    preamble = text[:matches[0].start()] if matches else text
    found = []
    for m, nxt in zip(matches, matches[1:] + [None]):
        body = text[m.end():nxt.start() if nxt is not None else len(text)]
        body = body.strip().strip("*_")  # "**Memory:** text": markdown's closing marks
        found.append((KINDS.get(m.group(1).lower(), "plan"), body))
    return preamble, found


def _plans(bodies, n_plans: int) -> Tuple[str, ...]:
    """Plans from the plan sections; one section may list several as numbered or dashed lines."""
    plans = []
    for body in bodies:
        items = BULLET.split(body) if BULLET.search(body) else [body]
        plans += [clean(item) for item in items]
    unique = dict.fromkeys(p for p in plans if p)  # in order, without repeats
    return tuple(unique)[:n_plans]


def parse(text: str, old_memory: str = "", n_plans: int = 3, paragraph_chars: int = 600,
          memory_chars: int = 400) -> Parsed:
    """Split a generator's text into (paragraph, new short-term memory, next plans), falling
    back where a part is missing or empty (see the module's docstring); never raises."""
    preamble, found = _sections(text)
    fallbacks = []
    bodies = [clean(b) for kind, b in found if kind == "paragraph"]
    paragraph = " ".join(b for b in bodies if b) or clean(preamble)
    if not paragraph:
        fallbacks.append("paragraph: empty")
    paragraph = whole_sentences(shorten(paragraph, paragraph_chars))
    memory = next((clean(b) for kind, b in found if kind == "memory" and clean(b)), "")
    if memory:
        memory = shorten(memory, memory_chars)
    else:
        fallbacks.append("memory: missing; the old memory and the paragraph's first sentence")
        # at most a quarter of the memory per step, so older facts fade over steps, not at once
        first = [shorten(s, memory_chars // 4) for s in sentences(paragraph)[:1]]
        memory = tail(clean(" ".join([old_memory] + first)), memory_chars)
    plans = _plans([b for kind, b in found if kind == "plan"], n_plans)
    if not plans:
        fallbacks.append("plans: missing; continue from the paragraph's end")
        plans = (f"Continue the story after: {tail(paragraph, 120)}" if paragraph
                 else "Continue the story.",)
    return Parsed(paragraph, memory, tuple(shorten(p, 300) for p in plans), tuple(fallbacks))


# --- the recurrence -------------------------------------------------------------------------
class RecurrentGPT:
    """The step function and its settings (nothing that changes between steps lives here).

    ``generator``: ``prompt -> text``; ``embedder``: for the long-term memory (default
    ``HashingEmbedder()``); ``top_k``: memories recalled per step (the paper: 2); ``n_plans``:
    plans asked for (the paper: 3); ``paragraph_chars`` / ``memory_chars``: length caps."""

    def __init__(self, generator: TextGenerator, embedder: Optional[Embedder] = None,
                 top_k: int = 2, n_plans: int = 3, paragraph_chars: int = 600,
                 memory_chars: int = 400):
        if not callable(generator):
            raise TypeError(f"RecurrentGPT: generator must be a callable prompt -> text, got "
                            f"{type(generator).__name__}")
        check_int("RecurrentGPT", "top_k", top_k, 0)
        check_int("RecurrentGPT", "n_plans", n_plans, 1)
        check_int("RecurrentGPT", "paragraph_chars", paragraph_chars, 20)
        check_int("RecurrentGPT", "memory_chars", memory_chars, 20)
        self.generator = generator
        self.embedder = embedder if embedder is not None else HashingEmbedder()
        self.top_k, self.n_plans = top_k, n_plans
        self.paragraph_chars, self.memory_chars = paragraph_chars, memory_chars

    def initial_state(self, premise: str) -> State:
        """Before the first paragraph: the premise is the memory and the first plan."""
        premise = clean(premise)
        if not premise:
            raise ValueError(f"RecurrentGPT: premise must be non-empty text, got {premise!r}")
        return State(shorten(premise, self.memory_chars),
                     LongTermMemory.empty(self.embedder.dim), "",
                     (f"Begin the story: {premise}",))

    def choose(self, choice: Union[None, int, str], state: State) -> str:
        """The step's input as a plan: None (the first proposed), an index into
        ``state.plans`` (from 0), or a plan of one's own."""
        if choice is None:
            return state.plans[0]
        if isinstance(choice, str):
            if not clean(choice):
                raise ValueError(f"RecurrentGPT.step: a plan of one's own must be non-empty "
                                 f"text, got {choice!r}")
            return clean(choice)
        check_int("RecurrentGPT.step", "choice", choice, 0, len(state.plans) - 1)
        return state.plans[choice]

    def step(self, choice: Union[None, int, str], state: State) -> Tuple[Output, State]:
        """One paragraph: ``(Output, new State)``; ``state`` is left as it was."""
        plan = self.choose(choice, state)
        # the last paragraph is in the prompt verbatim: recall among those before it
        recalled = state.long_memory.retrieve(plan, self.embedder, self.top_k, skip_last=1)
        prompt = render_prompt(state, plan, recalled, self.n_plans)
        raw = self.generator(prompt)
        if not isinstance(raw, str):
            raise TypeError(f"RecurrentGPT: the generator must return str, got "
                            f"{type(raw).__name__}")
        parsed = parse(raw, state.short_memory, self.n_plans, self.paragraph_chars,
                       self.memory_chars)
        new = State(parsed.memory, state.long_memory.add(parsed.paragraph, self.embedder),
                    parsed.paragraph, parsed.plans, state.step + 1)
        return Output(plan, recalled, prompt, raw, parsed), new


# --- the default generator: a char LM from `rnnlab train lm` ---------------------------------
class CharLMGenerator:
    """``prompt -> text``: ``max_chars`` characters sampled from a char LM after the last
    ``context_chars`` characters of the prompt (one prefill, then the LM's streaming
    ``generate``). The sampling seed is ``seed`` mixed with the prompt's CRC-32, so the same
    prompt always gives the same text and a RecurrentGPT step stays pure."""

    def __init__(self, lm, vocab, max_chars: int = 400, temperature: float = 0.8,
                 top_k: Optional[int] = 20, seed: int = 0, context_chars: int = 3000):
        check_int("CharLMGenerator", "max_chars", max_chars, 1)
        check_number("CharLMGenerator", "temperature", temperature, 0, 100)
        check_int("CharLMGenerator", "top_k", top_k, 1, optional=True)
        check_int("CharLMGenerator", "seed", seed, 0)
        check_int("CharLMGenerator", "context_chars", context_chars, 1)
        self.lm, self.vocab = lm, vocab
        self.max_chars, self.temperature, self.top_k = max_chars, temperature, top_k
        self.seed, self.context_chars = seed, context_chars

    def __call__(self, prompt: str) -> str:
        import torch
        if not prompt:
            raise ValueError("CharLMGenerator: prompt must be non-empty text, got ''")
        ids = self.vocab.encode(prompt[-self.context_chars:])[None]  # (1, T)
        ids = ids.to(self.lm.embed.weight.device)
        seed = (self.seed * 0x9E3779B1 + zlib.crc32(prompt.encode("utf-8"))) % 2 ** 63
        self.lm.eval()
        out = self.lm.generate(ids, self.max_chars, temperature=self.temperature,
                               top_k=self.top_k, generator=torch.Generator().manual_seed(seed))
        return self.vocab.decode(out[0, ids.shape[1]:].tolist())


def load_char_lm(path, device: str = "cpu", option: str = "--checkpoint"):
    """``(lm, vocab, metrics)`` from the folder ``rnnlab train lm --out PATH`` wrote (its
    ``model/``, ``vocab.json`` and, when present, ``metrics.json``); the folder ``model/``
    itself works too. A ValueError naming ``option`` says what is missing and how to make it."""
    from ..models.lm import LM
    from ..train.text import Vocab
    root = Path(path)
    if root.name == "model" and (root.parent / "vocab.json").is_file():
        root = root.parent
    make = (f"make one with `rnnlab train lm --data <prose> --out {root}` (about 10 minutes; "
            f"without --data it learns Python code, not stories), or add --train-tiny to train "
            f"a tiny one there first")
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise ValueError(f"{option}: expected the folder `rnnlab train lm --out` wrote, got "
                         f"{str(path)!r}, which {what}; {make}")
    missing = [name for name in ("model/config.json", "model/model.safetensors", "vocab.json")
               if not (root / name).is_file()]
    if missing:
        raise ValueError(f"{option}: {str(root)!r} has no {', no '.join(missing)} (a run of "
                         f"`rnnlab train lm` that has not finished?); {make}")
    vocab = Vocab.load(root / "vocab.json")
    lm = LM.from_pretrained(str(root / "model")).to(device)
    if lm.vocab_size != len(vocab):
        raise ValueError(f"{option}: the model in {str(root)!r} has {lm.vocab_size} tokens but "
                         f"its vocab.json {len(vocab)}; train it again")
    metrics = {}
    if (root / "metrics.json").is_file():
        try:
            metrics = json.loads((root / "metrics.json").read_text(encoding="utf-8"))
        except ValueError:
            metrics = {}
    return lm, vocab, metrics
