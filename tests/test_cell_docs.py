"""Every registered cell's class docstring cites its paper with a link and holds an example that
runs: the examples run here as doctests, so a docstring cannot drift from the code (issue 14,
item 8)."""
from __future__ import annotations

import doctest
import re
from typing import Dict, List

import pytest
import torch

from rnnlab import cells
from rnnlab.cells.registry import constructor

# a paper link: an arXiv abstract or a DOI
PAPER = re.compile(r"https://(arxiv\.org/abs/\d{4}\.\d{4,5}|doi\.org/10\.\d{4,9}/\S+)")


def _names_by_class() -> Dict[type, List[str]]:
    """Each registered class -> its registered names (``Elman``: rnn_relu, rnn_tanh)."""
    out: Dict[type, List[str]] = {}
    for name in cells.available():
        out.setdefault(constructor(name), []).append(name)
    return out


CLASSES = _names_by_class()


def doc_problems(cls: type, names: List[str]) -> List[str]:
    """What the docstring of ``cls`` (registered as ``names``) lacks, or its example's failures;
    empty when it cites a paper and its example builds the cell and runs as written."""
    doc = cls.__doc__ or ""
    problems = []
    if not PAPER.search(doc):
        problems.append("no paper link (https://arxiv.org/abs/... or https://doi.org/...)")
    finder = doctest.DocTestFinder(recurse=False)  # the class docstring, not its methods'
    tests = [t for t in finder.find(cls, cls.__qualname__, globs={}) if t.examples]
    source = "".join(e.source for t in tests for e in t.examples)
    if not tests:
        return problems + ["no runnable example (>>> lines)"]
    if not any(f'"{n}"' in source or f"'{n}'" in source for n in names) \
            and f"{cls.__name__}(" not in source:
        problems.append(f"the example does not build the cell (by {names[0]!r} or the class)")
    report: List[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    torch.manual_seed(0)
    for t in tests:
        runner.run(t, out=report.append)
    if runner.failures:
        problems.append("the example fails:\n" + "".join(report))
    return problems


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: CLASSES[c][0])
def test_cell_docstring_links_its_paper_and_its_example_runs(cls):
    problems = doc_problems(cls, CLASSES[cls])
    assert not problems, f"{cls.__qualname__}: " + "; ".join(problems)


def test_the_check_finds_a_missing_link_a_missing_example_and_a_wrong_output():
    class NoDocs:
        pass

    class WrongOutput:
        """Paper: https://arxiv.org/abs/1406.1078

        >>> import rnnlab
        >>> rnnlab.cells.get("gru", 2, 3).hidden_size
        4
        """

    assert [p.split(" (")[0] for p in doc_problems(NoDocs, ["gru"])] == \
        ["no paper link", "no runnable example"]
    failed = doc_problems(WrongOutput, ["gru"])  # the link and the cell found, the output wrong
    assert len(failed) == 1 and failed[0].startswith("the example fails"), failed
    assert "Expected:\n    4\nGot:\n    3" in failed[0], failed
