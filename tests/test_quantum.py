"""Quantum RNN (Bausch 2020): the statevector gates against hand-computed matrices, every stage
unitary before post-selection (fp64), the neuron's post-selected block and success probability
(Cao et al.'s cos^2 I + sin^2 (-iY) and its powers), the fast block path equal to the gate by
gate circuit, measurement distributions, argument errors, and the recipe through its CLI."""
import json
import math

import pytest
import torch
from typer.testing import CliRunner

import rnnlab
from rnnlab.cells.quantum import QuantumRNN, admissible
from rnnlab.ops import statevector as sv
from rnnlab.train.quantum_cli import register

from .helpers import command_group

C128 = torch.complex128


def cell(**options) -> QuantumRNN:
    torch.manual_seed(0)
    return rnnlab.cells.get("quantum_rnn", 3, 4, **options).double()


def assert_unitary(U: torch.Tensor) -> None:
    eye = torch.eye(U.shape[0], dtype=U.dtype)
    torch.testing.assert_close(U.conj().T @ U, eye, rtol=0, atol=1e-12)


# ---- gates ------------------------------------------------------------------------------------

def test_ry_and_controlled_match_their_matrices():
    t = 0.7
    ry = torch.tensor([[math.cos(t / 2), -math.sin(t / 2)], [math.sin(t / 2), math.cos(t / 2)]],
                      dtype=C128)
    minus_iy = torch.tensor(sv.MINUS_IY, dtype=C128)
    eye = torch.eye(2, dtype=C128)
    # qubit 0 is the most significant bit of the basis index
    torch.testing.assert_close(sv.unitary_matrix(lambda p: sv.ry(p, 1, t), 2),
                               torch.kron(eye, ry))
    cy = torch.block_diag(eye, minus_iy)  # control qubit 0, target qubit 1
    torch.testing.assert_close(sv.unitary_matrix(lambda p: sv.controlled(p, 0, 1), 2), cy)


def test_multiplexed_rotation_equals_its_chain_of_controlled_rotations():
    """R_y(2 eta(z)) with eta = b + w1 z1 + w2 z2 on qubit 0 == R_y(2b), then R_y(2 w_k)
    controlled by qubit k."""
    b, w1, w2 = 0.3, -0.8, 1.1
    eta = b + w1 * sv.bit(1, 3) + w2 * sv.bit(2, 3)
    fast = sv.unitary_matrix(lambda p: sv.ry(p, 0, 2 * eta), 3)

    def chain(p):
        p = sv.ry(p, 0, 2 * b)
        for k, w in ((1, w1), (2, w2)):
            c, s = math.cos(w), math.sin(w)
            p = sv.controlled(p, k, 0, ((c, -s), (s, c)))
        return p
    torch.testing.assert_close(fast, sv.unitary_matrix(chain, 3))
    assert_unitary(fast)


def test_ry_refuses_an_angle_varying_along_its_own_target():
    with pytest.raises(ValueError, match="must not vary along the target qubit 0"):
        sv.ry(sv.zeros_state(1, 2), 0, sv.bit(0, 2))
    with pytest.raises(ValueError, match="control and target must differ"):
        sv.controlled(sv.zeros_state(1, 2), 1, 1)


def test_postselection_keeps_the_outcome_probability_as_squared_norm():
    psi = sv.ry(sv.zeros_state(1, 2, C128), 0, 2 * 0.4)  # cos .4 |00> + sin .4 |10>
    kept = sv.postselect(psi, 0)
    torch.testing.assert_close(sv.sq_norm(kept), torch.tensor([math.cos(0.4) ** 2],
                                                              dtype=torch.float64))
    assert kept[0, 1].abs().sum() == 0


def test_probabilities_are_a_distribution_in_qubit_order():
    psi = sv.ry(sv.ry(sv.zeros_state(2, 3, C128), 0, 0.5), 2, 2.0)
    p = sv.probabilities(psi, [2, 0])
    assert p.shape == (2, 4) and (p >= 0).all()
    torch.testing.assert_close(p.sum(1), torch.ones(2, dtype=torch.float64))
    p2 = math.sin(1.0) ** 2  # qubit 2 is |1> with probability sin^2(theta/2)
    p0 = math.sin(0.25) ** 2
    want = torch.tensor([(1 - p2) * (1 - p0), (1 - p2) * p0, p2 * (1 - p0), p2 * p0])
    torch.testing.assert_close(p[0], want.double())


# ---- the neuron ---------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("eta", [0.1, 0.4, math.pi / 4, 1.3])
def test_neuron_rotates_by_arctan_tan_power_with_the_predicted_success(order, eta):
    """On a basis state the post-selected degree-d circuit turns |0> of its target into
    cos q |0> + sin q |1>, q = arctan(tan(eta)^(2^d)), with success cos^(2^(d+1)) + sin^..."""
    q = QuantumRNN(1, 2, input_qubits=1, state_qubits=2, order=order).double()
    n = order + 1
    eta_t = torch.tensor(eta, dtype=torch.float64).view([1] * (n + 1))  # () -> (1, 1, ..., 1)
    out = q.neuron(sv.zeros_state(1, n, C128), eta_t, order, order).reshape(-1)
    p = float(sv.sq_norm(out.view(1, -1)))
    k = 2 ** order
    assert p == pytest.approx(math.cos(eta) ** (2 * k) + math.sin(eta) ** (2 * k), abs=1e-12)
    assert p == pytest.approx(float(sv.rus_success(eta, order)), abs=1e-12)
    angle = math.atan2(math.sin(eta) ** k, math.cos(eta) ** k)
    torch.testing.assert_close(out[:2] / p ** 0.5, torch.tensor(
        [math.cos(angle), math.sin(angle)], dtype=C128))  # ancillas |0...0>, target 0 / 1
    assert out[2:].abs().sum() == 0  # every ancilla post-selected on |0>


@pytest.mark.parametrize("order", [0, 1, 2])
def test_every_stage_is_unitary_before_postselection(order):
    """Input stage, each neuron's gate circuit and the whole step without projections: U^+ U = I
    on the full register (ancillas, input, state), fp64."""
    c = cell(order=order, input_qubits=1, state_qubits=2, gates=True)
    n, inputs, states = c.registers(gates=True)
    u = torch.tensor([[0.9]], dtype=torch.float64).expand(2 ** n, 1)
    assert_unitary(sv.unitary_matrix(lambda p: sv.ry(p, inputs[0], 0.9), n))
    for q, eta in zip(states, c.etas(True, torch.float64)):
        assert_unitary(sv.unitary_matrix(
            lambda p: c.neuron(p, eta, q, order, postselect=False), n))
        inverse = sv.unitary_matrix(
            lambda p: c.neuron(p, eta, q, order, inverse=True, postselect=False), n)
        forward = sv.unitary_matrix(lambda p: c.neuron(p, eta, q, order, postselect=False), n)
        torch.testing.assert_close(inverse @ forward, torch.eye(2 ** n, dtype=C128))
    assert_unitary(sv.unitary_matrix(lambda p: c.circuit(p, u, gates=True, postselect=False), n))


def test_postselected_step_is_the_projection_of_the_unitary_step():
    """With every projection, the circuit equals projector x (the same gates): checked on the
    degree-1 neuron, where the only projection comes last."""
    c = cell(order=1, input_qubits=1, state_qubits=2, gates=True)
    n, _, states = c.registers(gates=True)
    eta = c.etas(True, torch.float64)[0]
    U = sv.unitary_matrix(lambda p: c.neuron(p, eta, states[0], 1, postselect=False), n)
    PU = sv.unitary_matrix(lambda p: c.neuron(p, eta, states[0], 1), n)
    P = torch.diag((torch.arange(2 ** n) < 2 ** (n - 1)).to(C128))  # ancilla (qubit 0) is |0>
    torch.testing.assert_close(PU, P @ U)


def test_block_path_equals_the_gate_by_gate_circuit():
    fast, slow = cell(order=2), cell(order=2, gates=True)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    h0 = torch.randn(2, *fast.state_shapes()[0], dtype=torch.float64)
    y_f, h_f, s_f = fast.trace(x, h0)
    y_s, h_s, s_s = slow.trace(x, h0)
    for a, b in ((y_f, y_s), (h_f, h_s), (s_f, s_s)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_complex_amplitudes_evolve_as_the_complex_circuit():
    """The step runs real and imaginary parts as two real registers; on a complex128 register
    the same gates give the same amplitudes and success."""
    c = cell(order=1)
    n, _, _ = c.registers(gates=False)
    amps = torch.randn(3, 2 ** c.state_qubits, 2, dtype=torch.float64)
    u = torch.randn(3, c.input_qubits, dtype=torch.float64)
    new, p = c.step_success(u, amps)
    z = torch.view_as_complex(admissible(amps))  # (B, 2^N)
    full = torch.zeros(3, 2 ** (n - c.state_qubits), z.shape[1], dtype=C128)
    full[:, 0] = z
    left = c.circuit(full.view(3, *[2] * n), u).reshape(3, -1, z.shape[1])[:, 0]
    torch.testing.assert_close(p, sv.sq_norm(left))
    torch.testing.assert_close(torch.view_as_complex(new.contiguous()),
                               left / p.sqrt()[:, None])


# ---- the cell ---------------------------------------------------------------------------------

def test_measurement_is_a_distribution_and_postselection_renormalises():
    c = cell(order=2)
    x = torch.randn(5, 9, 3, dtype=torch.float64)
    y, h, success = c.trace(x)
    assert (y >= 0).all() and y.shape == (5, 9, 4)
    torch.testing.assert_close(y.sum(-1), torch.ones(5, 9, dtype=torch.float64))
    torch.testing.assert_close((h ** 2).sum((1, 2)), torch.ones(5, dtype=torch.float64))
    assert ((success > 0) & (success <= 1 + 1e-12)).all() and (success < 1).any()
    layer = rnnlab.Recurrent(c, engine="sequential")
    y_engine, h_engine = layer(x)
    torch.testing.assert_close(y_engine, y)
    torch.testing.assert_close(h_engine, h)


def test_readout_folds_outcomes_beyond_hidden_size():
    c = rnnlab.cells.get("quantum_rnn", 1, 3).double()  # 2 measured qubits: 4 outcomes
    amps = torch.zeros(1, 2 ** c.state_qubits, 2, dtype=torch.float64)
    amps[0, -1, 0] = 1  # |11...1>: outcome 3, counted as class 3 mod 3 = 0
    torch.testing.assert_close(c.readout(amps, None), torch.tensor([[1.0, 0, 0]]).double())


def test_one_output_is_the_probability_of_outcome_one():
    c = rnnlab.cells.get("quantum_rnn", 1, 1).double()
    amps = torch.zeros(2, 2 ** c.state_qubits, 2, dtype=torch.float64)
    amps[0, 0, 0] = 1  # |00>: outcome 0
    amps[1, -1, 1] = 1  # i|11>: outcome 1
    torch.testing.assert_close(c.readout(amps, None), torch.tensor([[0.0], [1.0]]).double())


def test_basis_input_resets_the_input_register_with_certainty():
    """A pixel written as |0> or |1> (angle 0 or pi) is a control only: undoing the input stage
    succeeds with probability 1, so the step's success is the neurons' alone."""
    c = rnnlab.cells.get("quantum_rnn", 1, 2, input_qubits=1, state_qubits=2, order=0).double()
    with torch.no_grad():
        c.proj.weight.fill_(math.pi)
        c.proj.bias.zero_()
    _, _, success = c.trace(torch.tensor([[[0.0], [1.0], [1.0]]], dtype=torch.float64))
    torch.testing.assert_close(success, torch.ones(1, 3, dtype=torch.float64))  # order 0


def test_zero_amplitudes_stand_for_the_initial_state():
    c = cell()
    zero = torch.zeros(2, 2 ** c.state_qubits, 2, dtype=torch.float64)
    torch.testing.assert_close(admissible(zero), c.init_state(2, torch.float64))
    unit = admissible(torch.randn(2, 2 ** c.state_qubits, 2, dtype=torch.float64))
    torch.testing.assert_close(admissible(unit), unit)


def test_other_engines_refuse_it_or_run_it_as_a_dense_cell():
    c = cell()
    with pytest.raises(ValueError, match="cannot run QuantumRNN"):
        rnnlab.Recurrent(c, engine="scan")
    assert rnnlab.Recurrent(c, engine="auto").engine_name == "sequential"


@pytest.mark.parametrize("options, error, match", [
    (dict(order=4), ValueError, r"order must be an int in \[0, 3\], got 4"),
    (dict(order=-1), ValueError, r"order .* got -1"),
    (dict(input_qubits=0), ValueError, r"input_qubits .* got 0"),
    (dict(state_qubits=1), ValueError, r"state_qubits must be an int in \[2, 16\].*got 1"),
    (dict(state_qubits=14), ValueError, r"<= 16 qubits, got 2 \+ 2 \+ 14 = 18"),
    (dict(order=1.0), TypeError, r"order must be an int"),
    (dict(gates="yes"), TypeError, r"gates must be a bool"),
])
def test_bad_arguments_are_named(options, error, match):
    with pytest.raises(error, match=match):
        rnnlab.cells.get("quantum_rnn", 3, 4, **options)


def test_a_huge_hidden_size_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"hidden_size=100000 needs 17 output qubits"):
        rnnlab.cells.get("quantum_rnn", 3, 100_000)


# ---- the recipe -------------------------------------------------------------------------------

def cli():
    return command_group(register)


def test_cli_help_and_bad_options():
    result = CliRunner().invoke(cli(), ["quantum", "--help"])
    assert result.exit_code == 0 and "--state-qubits" in result.output
    result = CliRunner().invoke(cli(), ["quantum", "--state-qubits", "10"])
    assert result.exit_code == 2 and "<= 12 qubits" in result.output
    result = CliRunner().invoke(cli(), ["quantum", "--side", "3"])
    assert result.exit_code == 2 and "side must divide 8" in result.output


def test_recipe_end_to_end_at_toy_size(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli(), [
        "quantum", "--side", "2", "--state-qubits", "2", "--epochs", "2", "--batch", "64",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert 0 <= report["test_accuracy"] <= 1 and report["qubits"]["total"] == 5
    assert 0 < report["success_per_step"] <= 1 and report["steps_per_image"] == 4
    assert report["parameters"] == 2 + 2 * 3 + 2  # encoding, weights, biases
    assert (out / "quantum.png").stat().st_size > 1000
