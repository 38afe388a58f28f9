"""Label correctness of mod_arith, word_problem and iterated_matrix_sign against independent
oracles: hand-checked cases, Python's own arithmetic, explicit permutation composition and
Python-int matrix products."""
from __future__ import annotations

import itertools

import pytest
import torch

from rnnlab import tasks
from rnnlab.tasks import state_tracking as st

# --- mod_arith ------------------------------------------------------------------------------
_CODE = {ch: i for i, ch in enumerate("01234+-*=_()")}


def encode(text: str) -> torch.Tensor:
    """``"3+4*2="`` -> ``(1, T)`` tokens (``_`` is the pad)."""
    return torch.tensor([[_CODE[ch] for ch in text]])


def python_mod5(text: str) -> int:
    """Python's own precedence and associativity, then mod 5."""
    return eval(text.replace("=", "").replace("_", "")) % 5  # digits and + - * ( ) only


@pytest.mark.parametrize("text, value", [
    ("3+4*2=", 1),  # 11
    ("1-2-3=", 1),  # (1-2)-3 = -4; right-associative would give 2
    ("2-3*4+1=", 1),  # -9
    ("4*4*4-1=", 3),  # 63
    ("2*3-4*1+0*4=", 2),
    ("_3=", 3),
    ("4=", 4),
    ("(1+2)*3=", 4),  # 9
    ("2*(3-(4*4))=", 4),  # -26
    ("((((3))))=", 3),
    ("(2-4)*(3+(1))-(4)=", 3),  # -12
    ("4-(3)*(1-4)*((1)*3-0)=", 1),  # 31
])
def test_mod_arith_hand_checked(text, value):
    assert python_mod5(text) == value
    assert st.mod_arith_value(encode(text)).tolist() == [value]
    task = tasks.get("mod_arith", brackets="(" in text)
    targets = task.label(encode(text))
    assert targets[0, -1] == value and (targets[0, :-1] == 0).all()


def test_mod_arith_batched_rows_are_independent():
    rows = ["____(1+2)*3=", "____4*4*4-1=", "2*(3-(4*4))="]
    batch = torch.cat([encode(r) for r in rows])
    assert st.mod_arith_value(batch).tolist() == [4, 3, 4]


@pytest.mark.parametrize("brackets", [False, True])
def test_mod_arith_samples_match_python(brackets):
    task = tasks.get("mod_arith", brackets=brackets)
    gen = tasks.generator(0, "train")
    for length in (2, 3, 4, 9, 40, 61):
        x, y, mask = task.sample(48, length, gen)
        assert x.shape == (48, length) and int(x.max()) < task.vocab_size
        assert mask[:, -1].all() and not mask[:, :-1].any()
        assert (x[:, -1] == st.EQUALS).all()
        n_pad = (x == st.PAD).sum(1)
        assert (n_pad == (length % 2)).all()  # one pad, at the start, only for odd lengths
        assert (x[:, :length % 2] == st.PAD).all()
        if not brackets:
            assert not ((x == st.OPEN) | (x == st.CLOSE)).any()
        for row, target in zip(x.tolist(), y[:, -1].tolist()):
            text = "".join("01234+-*=_()"[t] for t in row)
            assert python_mod5(text) == target, text


def test_mod_arith_brackets_appear_and_nest():
    x, _, _ = tasks.get("mod_arith", brackets=True).sample(64, 40, tasks.generator(1, "train"))
    depth = ((x == st.OPEN).long() - (x == st.CLOSE).long()).cumsum(1)
    assert (depth >= 0).all() and (depth[:, -1] == 0).all()
    assert (x == st.OPEN).float().mean() > 0.03


def test_mod_arith_properties_and_decode():
    plain, nested = tasks.get("mod_arith"), tasks.get("mod_arith", brackets=True)
    assert (plain.vocab_size, nested.vocab_size, plain.n_outputs, plain.chance) == (10, 12, 5, 0.2)
    x = encode("_3+4*2=")[0]
    assert plain.decode(x, plain.label(x[None])[0], x > -1) == "3 + 4 × 2 = → 1"


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_mod_arith_rejects_bad_brackets(value):
    with pytest.raises(ValueError, match="brackets"):
        tasks.get("mod_arith", brackets=value)


# --- word_problem ---------------------------------------------------------------------------
def compose(a, b):
    """(a·b)(i) = a(b(i))."""
    return tuple(a[b[i]] for i in range(len(a)))


def parity(p) -> int:
    return sum(p[i] > p[j] for i, j in itertools.combinations(range(len(p)), 2)) % 2


@pytest.mark.parametrize("group, order, n, even_only", [
    ("S3", 6, 3, False), ("A4", 12, 4, True), ("A5", 60, 5, True), ("S5", 120, 5, False)])
def test_group_elements(group, order, n, even_only):
    elems = st.group_elements(group)
    assert len(elems) == len(set(elems)) == order
    assert elems[0] == tuple(range(n)) and elems == sorted(elems)
    assert all(sorted(p) == list(range(n)) for p in elems)
    if even_only:
        assert all(parity(p) == 0 for p in elems)
    closed = set(elems)
    assert all(compose(a, b) in closed for a in elems[:7] for b in elems)
    task = tasks.get("word_problem", group=group)
    assert task.vocab_size == task.n_outputs == order and task.chance == 1 / order


def test_word_problem_hand_checked():
    # S3 in lexicographic order: 0 e, 1 (0,2,1), 2 (1,0,2), 3 (1,2,0), 4 (2,0,1), 5 (2,1,0).
    task = tasks.get("word_problem", group="S3")
    assert task.label(torch.tensor([[1, 2], [2, 1]])).tolist() == [[1, 4], [2, 3]]
    assert task.label(torch.tensor([[3, 3, 3, 0, 5, 5]])).tolist() == [[3, 4, 0, 0, 5, 0]]


@pytest.mark.parametrize("group", ["S3", "A4", "A5", "S5"])
def test_word_problem_matches_explicit_composition(group):
    task = tasks.get("word_problem", group=group)
    elems = st.group_elements(group)
    for length in (1, 2, 7, 100):
        x, y, mask = task.sample(6, length, tasks.generator(length, "test"))
        assert mask.all()
        for row, labels in zip(x.tolist(), y.tolist()):
            prod = elems[0]
            for g, label in zip(row, labels):
                prod = compose(prod, elems[g])
                assert elems[label] == prod


@pytest.mark.parametrize("group", ["S3", "A4", "A5", "S5"])
def test_word_problem_generators_generate_the_group(group):
    # The closure of the two generators under composition is the whole group.
    elems = st.group_elements(group)
    gens = st.GENERATORS[group]
    reached, frontier = {elems[0]}, [elems[0]]
    while frontier:
        frontier = [compose(p, g) for p in frontier for g in gens
                    if compose(p, g) not in reached]
        reached.update(frontier)
    assert reached == set(elems)
    task = tasks.get("word_problem", group=group, tokens="generators")
    assert task.vocab_size == 2 and task.n_outputs == len(elems)
    assert task.chance == 1 / len(elems)
    assert task.train_lengths == (3, 40) and task.test_lengths[0] == 40
    assert tasks.get("word_problem", group=group).train_lengths == (16, 32)  # unchanged
    x, y, mask = task.sample(5, 60, tasks.generator(0, "test"))
    assert x.max() <= 1 and mask.all()
    for row, labels in zip(x.tolist(), y.tolist()):
        prod = elems[0]
        for token, label in zip(row, labels):
            prod = compose(prod, gens[token])
            assert elems[label] == prod


def test_word_problem_generators_hand_checked():
    # A5 by (01234) (token 0) and (012) (token 1): (01234)^5 = e, and (01234)(012) maps
    # 0 -> 1 -> 2, 1 -> 2 -> 3, 2 -> 0 -> 1, 3 -> 4, 4 -> 0: (1, 2, 3, 4, 0)∘(1, 2, 0, 3, 4).
    task = tasks.get("word_problem", group="A5", tokens="generators")
    elems = st.group_elements("A5")
    y = task.label(torch.tensor([[0, 0, 0, 0, 0], [0, 1, 1, 1, 0]]))
    assert y[0, -1] == 0 and elems[y[0, 0]] == (1, 2, 3, 4, 0)
    assert elems[y[1, 1]] == (2, 3, 1, 4, 0)
    assert elems[y[1, 3]] == (1, 2, 3, 4, 0)  # (012)^3 = e
    text = task.decode(torch.tensor([1]), y[1, :1], torch.ones(1, dtype=bool))
    assert text.split() == ["(012)", "→", "(01234)"]


def test_word_problem_decode_and_errors():
    task = tasks.get("word_problem", group="S3")
    text = task.decode(torch.tensor([1, 2]), torch.tensor([1, 4]), torch.ones(2, dtype=bool))
    assert text.split("\n")[1].split() == ["(01)", "→", "(021)"]
    with pytest.raises(ValueError, match="group"):
        tasks.get("word_problem", group="Z60")
    with pytest.raises(ValueError, match="tokens"):
        tasks.get("word_problem", group="A5", tokens="gens")


# --- iterated_matrix_sign -------------------------------------------------------------------
def det3(m) -> int:
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


def matmul(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]


def python_signs(tokens):
    """Signs of (M1⋯Mt)[0][0] with the full 3×3 product in Python ints: 0 -, 1 zero, 2 +."""
    prod, out = [[int(i == j) for j in range(3)] for i in range(3)], []
    for tok in tokens:
        prod = matmul(prod, st.MATRICES[tok])
        out.append((prod[0][0] > 0) - (prod[0][0] < 0) + 1)
    return out, prod


def test_matrices_are_unimodular():
    mats = st.MATRICES
    assert 4 <= len(mats) <= 8 and len({str(m) for m in mats}) == len(mats)
    for m in mats:
        assert len(m) == 3 and all(len(r) == 3 and set(r) <= {-1, 0, 1} for r in m)
        assert abs(det3(m)) == 1


def test_matrix_sign_hand_checked():
    task = tasks.get("iterated_matrix_sign")
    # 7 = diag(-1,1,1): -1; 0 = I+E01: +1; 6 = signed 3-cycle: C, C² have (0,0) = 0, C³ = -I.
    got = task.label(torch.tensor([[7, 7, 0, 6, 6, 6]])).tolist()
    assert got == [python_signs([7, 7, 0, 6, 6, 6])[0]]
    assert task.label(torch.tensor([[6, 6, 6]])).tolist() == [[1, 1, 0]]
    assert task.label(torch.tensor([[7]])).tolist() == [[0]]


def test_matrix_sign_exact_on_fast_growth():
    # (I+E01)(I+E12)(I+E20) repeated gains ~1.7 bits per round: ~300 bits, six 60-bit limbs;
    # the diag(-1,1,1) in the middle makes the huge (0,0) entry negative.
    tokens = [0, 2, 4] * 120 + [7] + [0, 2, 4] * 60 + [1, 3, 5] * 5
    signs, prod = python_signs(tokens)
    assert abs(prod[0][0]).bit_length() > 250
    task = tasks.get("iterated_matrix_sign")
    assert task.label(torch.tensor([tokens])).tolist() == [signs]


def test_matrix_sign_matches_python_ints():
    task = tasks.get("iterated_matrix_sign")
    x, y, mask = task.sample(12, 300, tasks.generator(3, "train"))
    assert mask.all()
    for row, labels in zip(x.tolist(), y.tolist()):
        assert python_signs(row)[0] == labels
    share = torch.bincount(y.flatten(), minlength=3).float() / y.numel()
    assert share[0] > 0.3 and share[2] > 0.3 and share[1] > 0  # both signs common, zeros occur


def test_matrix_sign_decode():
    task = tasks.get("iterated_matrix_sign")
    text = task.decode(torch.tensor([6, 6, 6]), torch.tensor([1, 1, 0]), torch.ones(3, dtype=bool))
    assert "sign  : 00-" in text and task.n_outputs == 3 and task.vocab_size == len(st.MATRICES)
