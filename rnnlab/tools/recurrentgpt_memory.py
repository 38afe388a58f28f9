"""RecurrentGPT's long-term memory: every paragraph written so far with its embedding, and
retrieval of the ``k`` stored paragraphs most similar to a query (Zhou et al. 2023 search it with
the plan of the next paragraph; they embed with a sentence-transformer).

Two embedders, each ``texts -> (N, E)`` float32 rows of unit length (zero for a text with no
features):

- ``HashingEmbedder`` (the default): character n-grams of the lower-cased words, hashed (CRC-32,
  the same on every machine and run, unlike Python's salted ``hash``) into ``dim`` signed
  buckets. Retrieval should find the paragraphs that share the plan's names and content words;
  n-gram overlap measures exactly that, needs no model, and does not change with the LM.
- ``LMEmbedder``: the mean of a char LM's last hidden states (after its final norm). Offered
  for comparison: an LM trained only to predict the next character encodes mostly the last few
  characters and the text's style, so its mean state is a weak measure of shared content.

``LongTermMemory`` is immutable: ``add`` returns a new memory, so a RecurrentGPT step that
holds it in its state stays a pure function.
"""
from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Protocol, Sequence, Tuple

import numpy as np

from ..checks import check_int

WORDS = re.compile(r"[^\w]+")  # punctuation and spaces between words


class Embedder(Protocol):
    """``texts -> (N, E)`` float32, each row of unit length or zero."""

    dim: int

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class HashingEmbedder:
    """Signed feature hashing of the character ``orders``-grams of each text's lower-cased
    words (each word padded with a space on both sides, so word starts and ends count)."""

    def __init__(self, dim: int = 1024, orders: Tuple[int, ...] = (3, 4, 5)):
        check_int("HashingEmbedder", "dim", dim, 2)
        if not orders or any(not isinstance(n, int) or n < 1 for n in orders):
            raise ValueError(f"HashingEmbedder: orders must be a non-empty tuple of ints >= 1, "
                             f"got {orders!r}")
        self.dim, self.orders = dim, tuple(orders)

    def _features(self, text: str):
        for word in WORDS.split(text.lower()):
            if word:
                padded = f" {word} "
                for n in self.orders:
                    for i in range(max(1, len(padded) - n + 1)):
                        yield zlib.crc32(padded[i:i + n].encode("utf-8"))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)  # (N, E)
        for row, text in enumerate(texts):
            for h in self._features(text):
                # the low bits pick the bucket, the top bit the sign: colliding features cancel
                # on average instead of piling up
                out[row, h % self.dim] += 1.0 if h >> 31 else -1.0
        return _unit_rows(out)


class LMEmbedder:
    """The mean over characters of ``lm``'s final-norm hidden states, ``(N, D)``; characters
    the vocabulary lacks become its unknown id."""

    def __init__(self, lm, vocab, max_chars: int = 2000):
        check_int("LMEmbedder", "max_chars", max_chars, 1)
        self.lm, self.vocab, self.max_chars = lm, vocab, max_chars
        self.dim = lm.embed.weight.shape[1]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        from ..models.block import run_blocks
        device = self.lm.embed.weight.device
        out = np.zeros((len(texts), self.dim), dtype=np.float64)  # (N, D)
        self.lm.eval()
        with torch.no_grad():
            for row, text in enumerate(texts):
                if not text:
                    continue  # no characters, no state: a zero row
                ids = self.vocab.encode(text[-self.max_chars:])[None].to(device)  # (1, T)
                hidden, _ = run_blocks(self.lm.blocks, self.lm.embed(ids))  # (1, T, D)
                out[row] = self.lm.norm(hidden)[0].mean(0).double().cpu().numpy()  # (D,)
        return _unit_rows(out)


@dataclasses.dataclass(frozen=True)
class Recall:
    """A retrieved paragraph: its position in the memory, cosine similarity, text."""

    index: int
    score: float
    text: str


@dataclasses.dataclass(frozen=True)
class LongTermMemory:
    """Every paragraph written, in order, with its embedding (one row of ``vectors (N, E)``)."""

    paragraphs: Tuple[str, ...]
    vectors: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> "LongTermMemory":
        return cls((), np.zeros((0, dim), dtype=np.float32))

    def __len__(self) -> int:
        return len(self.paragraphs)

    def add(self, paragraph: str, embedder: Embedder) -> "LongTermMemory":
        """A new memory with ``paragraph`` appended (this one is left as it was)."""
        vector = embedder([paragraph])  # (1, E)
        if vector.shape != (1, self.vectors.shape[1]):
            raise ValueError(f"LongTermMemory: the embedder gave shape {vector.shape} for one "
                             f"text, expected (1, {self.vectors.shape[1]})")
        return LongTermMemory(self.paragraphs + (paragraph,),
                              np.concatenate([self.vectors, vector]))  # (N + 1, E)

    def retrieve(self, query: str, embedder: Embedder, k: int,
                 skip_last: int = 0) -> Tuple[Recall, ...]:
        """The ``k`` paragraphs most similar to ``query`` (cosine; best first, ties to the
        earlier paragraph), among all but the last ``skip_last`` (those are in the prompt
        already)."""
        check_int("LongTermMemory.retrieve", "k", k, 0)
        check_int("LongTermMemory.retrieve", "skip_last", skip_last, 0)
        n = max(0, len(self) - skip_last)
        if n == 0 or k == 0:
            return ()
        scores = self.vectors[:n] @ embedder([query])[0]  # (n,)
        order = np.argsort(-scores, kind="stable")[:k]
        return tuple(Recall(int(i), float(scores[i]), self.paragraphs[i]) for i in order)


def retrieval_accuracy(queries: Sequence[str], documents: Sequence[str], embedder: Embedder,
                       k: int = 1) -> float:
    """The share of ``queries[i]`` whose own ``documents[i]`` is among the ``k`` documents
    retrieved for it (a check of an embedder for this memory: e.g. headline -> its article)."""
    check_int("retrieval_accuracy", "k", k, 1)
    if len(queries) != len(documents) or not queries:
        raise ValueError(f"retrieval_accuracy: expected as many queries as documents (>= 1), "
                         f"got {len(queries)} and {len(documents)}")
    memory = LongTermMemory(tuple(documents), embedder(list(documents)))
    hits = sum(i in [r.index for r in memory.retrieve(q, embedder, k)]
               for i, q in enumerate(queries))
    return hits / len(queries)
