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
        raise ValueError(f"--data: not given, and the default corpus, the Python sources "
                         f"under {root}, is not on this machine; give a text file")
    return "".join(parts)[:max_chars], f"python-stdlib ({root})"


def load_text(path: Optional[Path], max_chars: int) -> Tuple[str, str]:
    """The text of ``path`` (a file, or a folder of ``*.txt``/``*.py``/``*.md`` files, in sorted
    order), or the default corpus when ``path`` is None; at most ``max_chars`` characters (only
    those are read). Bytes that are not UTF-8 become ``UNKNOWN`` (see ``undecodable_share``)."""
    if path is None:
        return stdlib_corpus(max_chars)
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".py", ".md")
                       and p.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"--data: expected a text file or a folder, got {str(path)!r}, which "
                         f"does not exist")
    parts, total = [], 0
    for file in files:
        if total >= max_chars:
            break
        try:
            with open(file, encoding="utf-8", errors="replace") as f:
                parts.append(f.read(max_chars - total))
        except OSError as err:
            raise ValueError(f"--data: cannot read {str(file)!r}: {err.strerror}") from None
        total += len(parts[-1])
    text = "".join(parts)
    if len(text) < 1000:
        raise ValueError(f"--data: {str(path)!r} holds {len(text)} characters"
                         f"{'' if files else ' (no *.txt, *.py or *.md files)'}; need at least "
                         f"1000")
    return text, str(path)


def undecodable_share(text: str) -> float:
    """The fraction of ``text`` that is NUL or was not UTF-8: near 0 for text, large for a
    binary file."""
    return (text.count(UNKNOWN) + text.count("\0")) / max(1, len(text))


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
        """The vocabulary ``save`` wrote; a ValueError naming the file when it is damaged."""
        try:
            chars = json.loads(Path(path).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            chars = None
        if not (isinstance(chars, list) and chars[:1] == [UNKNOWN]
                and all(isinstance(c, str) and len(c) == 1 for c in chars)):
            raise ValueError(f"{path} is not a vocabulary written by rnnlab (damaged?); train "
                             f"again to rewrite it")
        return cls(chars[1:])


def windows(data: torch.Tensor, batch: int, length: int, gen: torch.Generator
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``data (N,)``: inputs and next-character targets, each ``(B, T)``."""
    start = torch.randint(0, data.numel() - length - 1, (batch,), generator=gen)
    idx = start[:, None] + torch.arange(length + 1)  # (B, T + 1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]
