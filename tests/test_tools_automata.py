"""DFAs (``rnnlab.tools.automata``): Hopcroft minimisation, equivalence with the exact shortest
counterexample, DOT text and the PNG on hand-checkable automata; the reference Tomita DFAs
against the task's own labels; extraction from an SR-GRU; the ``rnnlab automata`` commands."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from rnnlab import tasks
from rnnlab.nn.state_reg import SRAcceptor
from rnnlab.tools.automata import (
    DFA,
    equivalent,
    extract,
    minimize,
    reachable,
    save_png,
    to_dot,
    tomita,
    word_agreement,
)
from rnnlab.tools.automata_cli import register
from rnnlab.tools.automata_study import (
    balanced_prefixes,
    paren_batch,
    plot_parens,
    tomita_batch,
    train_acceptor,
)

# Odd number of b's, with a third state 2 that only a redundant table would keep (unreachable)
REDUNDANT = DFA([(0, 1), (1, 0), (2, 0)], {1, 2}, 0, ("a", "b"))
# Contains "b": the minimal DFA has 2 states; a 3rd, unreachable, must vanish.
CONTAINS_B = DFA([(0, 1), (1, 1), (0, 2)], {1}, 0, ("a", "b"))


def test_hopcroft_merges_the_redundant_state():
    # 0 -a-> 2, 0 -b-> 1; 1 and 2 both accept, stay on a and go back to 0 on b: they are one
    # state, and the minimal DFA is 0 (reject) -a,b-> 1 (accept) -a-> 1, -b-> 0
    dfa = DFA([(2, 1), (1, 0), (2, 0)], {1, 2}, 0, ("a", "b"))
    small = minimize(dfa)
    assert small.n_states == 2
    assert small.delta == ((1, 1), (1, 0)) and small.accepting == {1} and small.start == 0


def test_minimize_drops_unreachable_states_and_keeps_the_language():
    small = minimize(CONTAINS_B)
    assert small.n_states == 2 and small.delta == ((0, 1), (1, 1))
    assert reachable(CONTAINS_B).n_states == 2
    for n in range(6):
        for w in itertools.product(range(2), repeat=n):
            assert small.accepts(w) == CONTAINS_B.accepts(w) == (1 in w)


def test_minimal_dfa_is_its_own_minimum_and_redundant_one_shrinks():
    assert minimize(REDUNDANT).n_states == 2  # state 2 is unreachable there
    t3 = tomita(3)
    assert minimize(t3) == t3


def test_equivalent_true_for_a_redundant_copy():
    # the parity DFA of b's, with "odd" split into two equivalent states that alternate
    big = DFA([(0, 1), (2, 0), (1, 0)], {1, 2}, 0, ("a", "b"))
    small = DFA([(0, 1), (1, 0)], {1}, 0, ("a", "b"))
    assert equivalent(big, small) == (True, None)
    assert minimize(big) == small


def test_equivalent_gives_the_shortest_counterexample_first_in_alphabet_order():
    everything = DFA([(0, 0)], {0}, 0, ("a", "b"))
    # rejects exactly the words of length 2: counterexamples aa, ab, ba, bb; aa comes first
    not_two = DFA([(1, 1), (2, 2), (3, 3), (3, 3)], {0, 1, 3}, 0, ("a", "b"))
    assert equivalent(everything, not_two) == (False, (0, 0))
    assert equivalent(not_two, everything) == (False, (0, 0))
    # Tomita 1 (1*) and 2 ((10)*) both take the empty word and reject "0"; "1" is in 1* only
    same, word = equivalent(tomita(1), tomita(2))
    assert not same and tomita(1).text(word) == "1"


def test_equivalent_needs_one_alphabet():
    with pytest.raises(ValueError, match="share an alphabet"):
        equivalent(REDUNDANT, tomita(1))


def test_dot_text_by_hand():
    dfa = DFA([(1, 0), (1, 2), (2, 2)], {0, 2}, 0, ("0", "1"))
    assert to_dot(dfa, "g") == (
        "digraph g {\n  rankdir=LR;\n  __start [shape=point];\n"
        '  0 [shape=doublecircle, label="0"];\n  1 [shape=circle, label="1"];\n'
        '  2 [shape=doublecircle, label="2"];\n  __start -> 0;\n'
        '  0 -> 1 [label="0"];\n  0 -> 0 [label="1"];\n  1 -> 1 [label="0"];\n'
        '  1 -> 2 [label="1"];\n  2 -> 2 [label="0,1"];\n}\n')


def test_transitions_dict_and_checks():
    assert tomita(1).transitions == {(0, "0"): 1, (0, "1"): 0, (1, "0"): 1, (1, "1"): 1}
    with pytest.raises(ValueError, match=r"delta\[1\] must hold 2 states in \[0, 1\]"):
        DFA([(0, 1), (0, 2)], {0})
    with pytest.raises(ValueError, match="start must be an int in"):
        DFA([(0, 0)], {0}, start=1)
    with pytest.raises(ValueError, match=r"accepting states must be in \[0, 0\], got \[3\]"):
        DFA([(0, 0)], {3})


@pytest.mark.parametrize("grammar,states", [(1, 2), (2, 3), (3, 5), (4, 4), (5, 4), (6, 3),
                                            (7, 5)])
def test_tomita_reference_matches_the_task_up_to_length_8(grammar, states):
    dfa, task = tomita(grammar), tasks.get("tomita", grammar=grammar)
    assert dfa.n_states == states and dfa.accepts(())
    for n in range(1, 9):
        words = torch.tensor(list(itertools.product([0, 1], repeat=n)))  # (2^n, n)
        labels = task.label(words)[:, -1].tolist()
        assert [dfa.accepts(w) for w in words.tolist()] == [bool(y) for y in labels]


def test_png_is_written(tmp_path):
    path = save_png([(tomita(g), f"T{g}") for g in (1, 3)], tmp_path / "d.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_extraction_of_a_hard_sr_gru_is_exactly_faithful():
    """In hard mode an SR-GRU's state is a centroid, so the network is a DFA over them: the
    extracted automaton must agree with it on every prefix."""
    torch.manual_seed(0)
    model = SRAcceptor(2, 2, hidden_size=8, centroids=6, mode="hard").eval()
    task = tasks.get("tomita", grammar=4)
    dfa = extract(model, task, strings=200, length=12)
    assert dfa.n_states <= 6 and dfa.alphabet == ("0", "1")
    tokens = torch.randint(0, 2, (50, 30), generator=torch.Generator().manual_seed(1))
    assert word_agreement(model, dfa, tokens) == 1.0
    assert equivalent(minimize(dfa), dfa) == (True, None)


def test_trained_sr_gru_on_tomita_1_gives_the_true_dfa():
    task = tasks.get("tomita", grammar=1)
    torch.manual_seed(0)
    model = SRAcceptor(2, 2, hidden_size=8, centroids=4, seed=0)
    train_acceptor(model, tomita_batch(task, 32, 8), steps=150, seed=0)
    dfa = minimize(extract(model, task, strings=300, length=10))
    assert equivalent(dfa, tomita(1)) == (True, None)


def test_parentheses_data():
    assert balanced_prefixes([0, 2, 1, 1, 0]) == [1, 0, 0, 1, 0, 0]  # "(a))(": dead after 4
    gen = torch.Generator().manual_seed(0)
    tokens, targets, mask, lengths, depth = paren_batch(40, [4], gen)
    rows = torch.arange(40)
    assert (depth == 4).all() and (targets[rows, lengths] == (rows % 2 == 0)).all()
    for b in range(0, 40, 2):  # positives: nesting exactly 4
        s, level, deepest = tokens[b, :lengths[b]].tolist(), 0, 0
        for t in s:
            level += {0: 1, 1: -1}.get(t, 0)
            deepest = max(deepest, level)
        assert deepest == 4 and level == 0
    assert mask.sum(1).tolist() == (lengths + 1).tolist()


# --- the commands -------------------------------------------------------------------------------
def cli():
    app = typer.Typer()
    register(app, typer.Typer())
    return app


@pytest.mark.parametrize("args", [["automata", "--help"], ["automata", "tomita", "--help"],
                                  ["automata", "parens", "--help"], ["automata", "dot", "--help"]])
def test_help(args):
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0 and "Usage" in result.output


def test_dot_command_prints_the_reference():
    result = CliRunner().invoke(cli(), ["automata", "dot", "2"])
    assert result.exit_code == 0 and result.output == to_dot(tomita(2), "tomita2")


@pytest.mark.parametrize("args,message", [
    (["dot", "9"], "grammar: expected an integer <= 7, got 9"),
    (["tomita", "--grammars", "8"], "--grammars: expected comma-separated integers in [1, 7]"),
    (["tomita", "--final-mode", "x"], "--final-mode: expected one of"),
    (["parens", "--cells", "lstm"], "--cells: expected one of"),
    (["parens", "--train-depth", "5", "--test-depth", "3"], "--test-depth: expected an integer"),
])
def test_bad_options_are_one_line_errors(args, message):
    result = CliRunner().invoke(cli(), ["automata", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_tiny_tomita_run_writes_json_and_png(tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "f.png"
    result = CliRunner().invoke(cli(), ["automata", "tomita", "--grammars", "1", "--steps", "20",
                                        "--hidden", "4", "--centroids", "3", "--out", str(out),
                                        "--figure", str(png)])
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())["rows"][0]
    assert row["grammar"] == 1 and row["true_states"] == 2 and "digraph" in row["dot"]
    assert row["equivalent"] == (row["counterexample"] is None)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_parens_plot_reads_results_as_json_holds_them(tmp_path):
    results = {"sr-lstm": {"accuracy_by_depth": {"1": 1.0, "10": 0.5, "2": 0.9}}}
    path = plot_parens(json.loads(json.dumps(results)), 1, tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
