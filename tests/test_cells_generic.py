"""Generic tests over the cell registry: every registered cell gets them, with no test written
for it. Each is one property of ``rnnlab.testing`` (the harness ``check_cell`` runs on cells
defined outside the package), built by name from (input_size, hidden_size) alone and run on the
sequential (reference) engine; the per-engine checks run in ``test_padding.py`` and
``test_fuzz_engines.py``."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab import cells, testing
from rnnlab.cells import Linear

NAMES = cells.available()
D, H = 5, 7  # odd, not powers of two
SIZES = dict(input_size=D, hidden_size=H)


def _structure(name: str):
    return cells.get(name, D, H, device="meta").structure


NONLINEAR = [n for n in NAMES if not isinstance(_structure(n), Linear)]
LINEAR = [n for n in NAMES if n not in NONLINEAR]
AFFINE = [n for n in LINEAR if _structure(n).kind != "monoid"]


def test_registry_lists_the_classic_cells():
    assert {"rnn_tanh", "rnn_relu", "gru", "lstm", "indrnn"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_reach_everything(name):
    testing.check_gradients(name, **SIZES)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed(name):
    testing.check_determinism(name, seed=3, **SIZES)


@pytest.mark.parametrize("name", NAMES)
def test_step_is_pure_and_shapes_match_the_contract(name):
    testing.check_step_contract(name, **SIZES)


@pytest.mark.parametrize("name", NONLINEAR)
def test_declared_structure_holds(name):
    testing.check_structure(name, **SIZES)


@pytest.mark.parametrize("name", AFFINE)
def test_linear_cell_is_affine_with_its_declared_kind(name):
    """step(u, h) = A h + b: affine in h, and A has the pattern of its Linear(kind)."""
    testing.check_structure(name, **SIZES)


@pytest.mark.parametrize("name", AFFINE)
def test_transition_agrees_with_step(name):
    testing.check_transition(name, **SIZES)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10, deadline=None)
@given(cuts=st.lists(st.integers(1, 23), min_size=1, max_size=6, unique=True))
def test_streaming_in_chunks_equals_one_run(name, cuts):
    testing.check_streaming(name, cuts=cuts, **SIZES)


@pytest.mark.parametrize("name", NAMES)
def test_lengths_equal_each_sequence_alone(name):
    testing.check_lengths(name, **SIZES)


@pytest.mark.parametrize("name", NAMES)
def test_padding_has_no_influence(name):
    """On the sequential engine; the others: ``test_padding.py``."""
    testing.check_padding(name, **SIZES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_input_dtypes_keep_a_wide_state(name, dtype):
    testing.check_dtypes(name, dtypes=[dtype], **SIZES)


@pytest.mark.parametrize("name", NAMES)
def test_fp64_cell_passes_gradcheck(name):
    testing.check_gradcheck(name, **SIZES)
