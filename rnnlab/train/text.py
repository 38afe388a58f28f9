"""Text corpora for character-level models: loading, a character vocabulary, random windows.

The default corpus is always on the machine: the Python standard library's own source files
(as char-rnn once trained on the Linux source), read in sorted order so every machine with the
same Python gets the same text.
"""
from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..tools.files import write_atomic

UNKNOWN = "\ufffd"  # stands for characters the vocabulary has not seen


def stdlib_corpus(max_chars: int) -> Tuple[str, str]:
    """Up to ``max_chars`` of the standard library's top-level ``*.py`` sources, and a name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(f"# file: {path.name}\n{text}\n")
        total += len(parts[-1])
        if total >= max_chars:
            break
    if not parts:
        raise FileNotFoundError(f"no Python sources found under {root}")
    return "".join(parts)[:max_chars], f"python-stdlib ({root})"


def load_text(path: Optional[Path], max_chars: int) -> Tuple[str, str]:
    """The text of ``path`` (a file, or a folder of ``*.txt``/``*.py`` files), or the default
    corpus when ``path`` is None; at most ``max_chars`` characters."""
    if path is None:
        return stdlib_corpus(max_chars)
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".py", ".md"))
        text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    elif path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        raise ValueError(f"--data: {path} is neither a file nor a folder")
    if len(text) < 1000:
        raise ValueError(f"--data: {path} holds {len(text)} characters; need at least 1000")
    return text[:max_chars], str(path)


class Vocab:
    """Characters <-> ids; id 0 is ``UNKNOWN``."""

    def __init__(self, chars: List[str]):
        self.chars = [UNKNOWN] + [c for c in chars if c != UNKNOWN]
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index.get(c, 0) for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(self.chars))

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        return cls(json.loads(Path(path).read_text())[1:])


def windows(data: torch.Tensor, batch: int, length: int, gen: torch.Generator
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``data (N,)``: inputs and next-character targets, each ``(B, T)``."""
    start = torch.randint(0, data.numel() - length - 1, (batch,), generator=gen)
    idx = start[:, None] + torch.arange(length + 1)  # (B, T + 1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]
