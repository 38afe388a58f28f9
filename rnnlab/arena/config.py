"""Arena configuration: one flat dataclass, and the embedded presets.

A preset fixes the grid (models × tasks × seeds), the model size and the training budget, and
states what the literature expects, so the report can say where a run agrees and where it does
not. ``rnnlab arena`` runs ``quick`` by default; options on the command line override fields.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

from ..checks import check_bool, check_choice, check_int, check_number, did_you_mean
from .store import AGGREGATES


@dataclasses.dataclass
class ArenaConfig:
    models: List[str]  # model specs (rnnlab.arena.spec): cells, aliases, "transformer"
    tasks: List[str]  # task specs: "parity", "mod_arith(brackets=true)", ...
    seeds: List[int] = dataclasses.field(default_factory=lambda: [0])  # model + data seeds
    d_model: int = 64  # width of every block
    n_layers: int = 1  # residual blocks
    mlp: bool = True  # an MLP after each mixer
    steps: int = 1500  # most optimizer steps per run
    batch: int = 64  # sequences per step
    lr: float = 3e-3  # AdamW learning rate (cosine decay to 10% over `steps`)
    weight_decay: float = 0.0  # AdamW weight decay
    clip: float = 1.0  # gradient-norm clip
    eval_every: int = 100  # steps between validation checks at the longest train length
    early_stop: float = 0.99  # stop once validation reaches this twice in a row (None: never)
    eval_examples: int = 1024  # sequences per test length
    checkpoint_every: int = 200  # steps between resumable checkpoints
    device: str = "cpu"  # torch device for models and data
    threads: int = 1  # torch CPU threads; small models lose more to thread sync than they gain
    jobs: int = 1  # runs at a time, each in its own process (results do not depend on it)
    aggregate: str = "mean"  # over seeds in tables: "mean", or "best" (the best seed's values)
    # documented outcomes: (model label, task label) -> value expected beyond the train length
    expected: Dict[Tuple[str, str], float] = dataclasses.field(default_factory=dict)
    source: str = ""  # where `expected` comes from

    def training_fields(self) -> dict:
        """The fields that change results; a results directory is tied to them."""
        skip = {"device", "expected", "source", "checkpoint_every", "aggregate", "threads",
                "jobs"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


GRAZZI = "Grazzi et al., ICLR'25, Table 3 (scaled accuracy, train <= 40, test 40-256)"

# Trained on every prefix, scored on the final answer as Grazzi et al. (see tasks/parity.py).
QUICK_PARITY = "parity(supervise='all')"
# Grazzi et al.'s Table 3, parity column (best of 3 seeds)
GRAZZI_PARITY = {"slstm": 1.000, "mamba[0,1]": 0.000, "mamba[-1,1]": 1.000,
                 "deltanet[0,1]": 0.017, "deltanet[-1,1]": 1.000, "transformer": 0.022}

SELECTIV_T2 = "selectivbench(letters=12,instances=12,gap_min=1,gap_max=4,noise=0.2)"
SELECTIV_T3 = "selectivbench(letters=12,instances=12,gap_min=1,gap_max=1,distractors=0.1)"
PRESETS: Dict[str, dict] = {
    # Parity separates the families in minutes: every nonlinear RNN and every linear RNN with
    # negative eigenvalues solves it at any length; [0, 1] eigenvalues and attention stay at chance.
    "quick": dict(
        models=["lstm", "slstm", "mamba[0,1]", "mamba[-1,1]", "deltanet[0,1]", "deltanet[-1,1]",
                "transformer"],
        tasks=[QUICK_PARITY],
        seeds=[0, 1, 2], aggregate="best",  # as Grazzi et al.: the best of 3 seeds
        steps=1000,  # learners stop early by step ~200; the rest stay at chance
        expected={("lstm", QUICK_PARITY): 1.0,
                  **{(m, QUICK_PARITY): v for m, v in GRAZZI_PARITY.items()}},
        source=GRAZZI),
    "state_tracking": dict(
        models=["lstm", "slstm", "mamba[0,1]", "mamba[-1,1]", "deltanet[0,1]", "deltanet[-1,1]",
                "deltaproduct[-1,1]", "transformer", "mlstm"],
        tasks=[QUICK_PARITY, "mod_arith", "mod_arith(brackets=true)", "word_problem(group='S3')",
               "word_problem(group='A5')", "tomita(grammar=5)", "dyck"],
        steps=3000, d_model=64, n_layers=2,
        expected={**{(m, QUICK_PARITY): v for m, v in GRAZZI_PARITY.items()},
                  ("mlstm", QUICK_PARITY): 0.087, ("mlstm", "mod_arith"): 0.040,
                  ("mlstm", "mod_arith(brackets=true)"): 0.114,
                  ("transformer", "mod_arith"): 0.031, ("slstm", "mod_arith"): 0.787,
                  ("mamba[0,1]", "mod_arith"): 0.095, ("mamba[-1,1]", "mod_arith"): 0.241,
                  ("deltanet[0,1]", "mod_arith"): 0.314, ("deltanet[-1,1]", "mod_arith"): 0.971,
                  ("transformer", "mod_arith(brackets=true)"): 0.067,
                  ("slstm", "mod_arith(brackets=true)"): 0.178,
                  ("mamba[0,1]", "mod_arith(brackets=true)"): 0.123,
                  ("mamba[-1,1]", "mod_arith(brackets=true)"): 0.116,
                  ("deltanet[0,1]", "mod_arith(brackets=true)"): 0.194,
                  ("deltanet[-1,1]", "mod_arith(brackets=true)"): 0.260},
        source=GRAZZI + "; word problems: Merrill et al. ICML'24, Siems et al. NeurIPS'25"),
    "recall": dict(
        models=["gru", "lstm", "mamba[0,1]", "gla", "deltanet[-1,1]", "mlstm", "transformer"],
        tasks=["mqar", "selective_copy", "copy", "passkey", "set_disjointness"],
        # lr 1e-3: at 3e-3 attention stalls on MQAR at 1/8 (a value from the context, not
        # the right one: 0.136), at 1e-3 it solves it (0.992; docs/results.md)
        steps=2000, lr=1e-3, d_model=64, n_layers=2,
        source="Zoology (Arora et al. 2023): attention solves MQAR at small width; recurrent "
               "recall degrades as pairs outgrow the state"),
    "selectivity": dict(
        # SelectivBench at A = D = 8 (T1-like), then at A = D = 12 with 1-4 gap frames and
        # noise (T2) and with one gap frame that shows forbidden symbols 10% of the time (T3):
        # the CPU-sized versions of the paper's settings (reference/tasks.md §1).
        models=["gru", "mamba[0,1]", "mamba2[0,1]", "gla", "gated_deltanet[-1,1]", "transformer",
                "dlr", "minmax"],
        tasks=["selectivbench", SELECTIV_T2, SELECTIV_T3, "dlr_shift", "dlr_context_shift",
               "latching"],
        steps=2000, d_model=64, n_layers=2,
        expected={("dlr", "dlr_shift"): 1.0, ("minmax", "latching"): 1.0},
        source="SelectivBench (Bouhadjar et al. 2026, figures only: softmax attention best, "
               "gating helps); DLR (Gupta et al. 2022): DLR near-perfect on Shift, fails "
               "ContextShift (no number); MinMax RNC (Ronca 2026): latching solved perfectly"),
}
PRESETS["word_problems"] = dict(
    # One layer on group word problems: PD transitions (pd_ssm) and Householder products with
    # n_h = 2 (deltaproduct) can represent A5/S5, a diagonal transition (mamba) cannot.
    models=["mamba[-1,1]", "deltanet[-1,1]", "deltaproduct[-1,1]", "pd_ssm",
            "pd_ssm(estimator='straight_through')"],
    tasks=["word_problem(group='S3')", "word_problem(group='A5')", "word_problem(group='S5')"],
    seeds=[0, 1, 2], aggregate="best", steps=10000, d_model=64, n_layers=1,
    source="Merrill et al. 2026 (PD linear RNNs are NC1-complete), Terzić et al. 2025 "
           "(PD-SSM), Siems et al. 2025 (DeltaProduct n_h = 2 tracks S3 and A5); theory, so no "
           "expected values: solving is 1.0, chance 1/|G|")
PD_AUTOMATON = ("pd_ssm(start='one_hot',estimator='straight_through',state_size=64,heads=1,"
                "complex=true)")
PRESETS["group_automata"] = dict(
    # PD-SSM's protocol (Terzić et al. 2025): a group's Cayley automaton, words over two
    # generators, one layer, trained on 3-40, tested to 256. PD-SSM as the paper's (one-hot start
    # state, straight-through hardmax, complex diagonal, one head of N = 64 >= |A5|) against a
    # diagonal SSM with negative eigenvalues, Householder products (n_h = 2) and an LSTM. S5 needs
    # N >= 120 for its one-hot states, ~3.5x the time a step on CPU (0.96 s): a GPU run, with
    # --tasks "word_problem(group='S5',tokens='generators')" and state_size=128 (docs/results.md:
    # PD fits S5, and DeltaProduct needs deltaproduct[-1,1](substeps=4) there, n_h = n - 1).
    models=[PD_AUTOMATON, "mamba[-1,1]", "deltaproduct[-1,1]", "lstm"],
    tasks=["word_problem(group='A5',tokens='generators')",
           "word_problem(group='S3',tokens='generators')"],
    seeds=[0, 1], aggregate="best", steps=10000, lr=2e-3, d_model=64, n_layers=1,
    source="Terzić et al. 2025 (PD-SSM, figures only: one PD layer tracks A5 and S5 automata); "
           "Merrill et al. 2026 (PD linear RNNs are NC1-complete; a diagonal layer cannot track "
           "A5/S5, nor the non-abelian S3 in one layer): solving is 1.0, chance 1/|G|")
PRESETS["jrt"] = dict(
    # Just read twice (Arora et al. 2024): set disjointness with the smaller set first (ratio
    # 0.25) or last (0.75), read once or twice (reads=2), and GLA causal or in prefix mode.
    models=["gla", "gla(prefix=true)", "transformer"],
    tasks=["set_disjointness(ratio=0.25)", "set_disjointness(ratio=0.75)",
           "set_disjointness(ratio=0.25,reads=2)", "set_disjointness(ratio=0.75,reads=2)"],
    seeds=[0, 1], steps=3000, d_model=64, n_layers=2,  # 2 layers: prefix mode needs a second
    source="Arora et al. 2024, 'Just read twice' (plots only): a causal model does better with "
           "the smaller set first; reading twice or a non-causal prefix closes the gap")
UT_TABLE = ("Dehghani et al., ICLR'19 (Universal Transformer), algorithmic table, character "
            "accuracy, train <= 40 symbols, test <= 400 [recalled, unchecked against the PDF]")
# The UT as the paper trains it on these tasks, in one stream: positions start at random offsets
# (up to the longest test length, so the positions met in test have been seen), sinusoidal
# positions only (no RoPE), and positions start again at the delimiter (token 11 in all three
# tasks) with a segment embedding: output symbol p sits at input symbol p's position, the
# alignment the paper's encoder-decoder has by construction (docs/results.md: without it the UT
# copies nothing beyond the train lengths).
UT_PAPER = "ut(position_offset=800,restart_at=11,rotary=false)"
UT_OFFSETS = "ut(position_offset=800)"  # offsets alone (the first version of this row)
# The control: 2 distinct layers, fixed depth, no ACT (the paper's own view of a Transformer)
# with the UT's positions; it tells the UT's recurrence in depth from its position scheme.
UT_TRANSFORMER = ("ut(tied=false,act=false,max_steps=2,position_offset=800,restart_at=11,"
                  "rotary=false)")
PRESETS["algorithmic"] = dict(
    # tensor2tensor's copy, reverse and addition, strings of <= 40 symbols in training and up to
    # 400 in test; the UT repeats one attention block with ACT, the Transformer stacks 2.
    models=["lstm", "transformer", UT_PAPER, UT_TRANSFORMER, UT_OFFSETS, "ut"],  # + ablations
    tasks=["identity", "reverse", "addition"],
    # lr 1e-3: the post-norm UT stalls at 3e-3 (0.23 vs 0.55 at T = 81 after 3000 steps on
    # identity); the budget lets every model fit the train lengths before extrapolating.
    steps=8000, lr=1e-3, d_model=64, n_layers=2,
    expected={("lstm", "identity"): 0.45, ("transformer", "identity"): 0.53,
              (UT_PAPER, "identity"): 0.91, ("lstm", "reverse"): 0.66,
              ("transformer", "reverse"): 0.13, (UT_PAPER, "reverse"): 0.96,
              ("lstm", "addition"): 0.08, ("transformer", "addition"): 0.07,
              (UT_PAPER, "addition"): 0.34},
    source=UT_TABLE)
# prefix mode runs only on tasks that give a context prefix, and a restart token names one task
# family's delimiter: neither runs over every task
FULL_MODELS = sorted({m for p in PRESETS.values() for m in p["models"]
                      if "prefix=" not in m and "restart_at=" not in m})
PRESETS["full"] = dict(
    models=FULL_MODELS,
    tasks=None,  # every preset's tasks, then every other registered task (at load time), once
    steps=3000, d_model=64, n_layers=2,
    expected={k: v for p in PRESETS.values() for k, v in p.get("expected", {}).items()
              if k[0] in FULL_MODELS},
    source="all of the above")


def preset(name: str, **overrides) -> ArenaConfig:
    """The preset ``name`` with ``overrides`` (fields of ``ArenaConfig``; None means keep)."""
    from .. import tasks
    if name not in PRESETS:
        raise ValueError(f"--preset: unknown preset {name!r}{did_you_mean(name, PRESETS)}; "
                         f"available: {', '.join(PRESETS)}")
    fields = dict(PRESETS[name])
    if fields.get("tasks") is None:
        listed = [t for p in PRESETS.values() for t in (p["tasks"] or [])]
        every = [n for n in tasks.available() if tasks.get(n).kind in ("tokens", "real")]
        fields["tasks"] = _distinct_tasks(listed + every)
    known = {f.name for f in dataclasses.fields(ArenaConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"arena: unknown option {key!r}{did_you_mean(key, known)}; "
                             f"known: {sorted(known)}")
        if value is not None:
            fields[key] = value
    return ArenaConfig(**fields)


def _distinct_tasks(labels: List[str]) -> List[str]:
    """``labels`` less each that builds the same task as an earlier one: a registry default is
    often a listed variant by another name (``word_problem`` is ``word_problem(group='S5')``),
    and training it again would only repeat that variant's records."""
    from .spec import task as build  # spec imports this module
    kept: List[str] = []
    built: list = []  # tasks are dataclasses: equal options, equal task (and unhashable)
    for label in dict.fromkeys(labels):
        task = build(label)[1]
        if task not in built:
            kept.append(label)
            built.append(task)
    return kept


# the fields that ``rnnlab arena`` sets from an option: field -> option
CLI_OPTIONS = {**{f: f"--{f}" for f in ("models", "tasks", "seeds", "steps", "lr", "batch",
                                        "device", "threads", "jobs")},
               "d_model": "--d-model", "n_layers": "--layers"}


def _owner(field: str) -> Tuple[Optional[str], str]:
    """How an error names a field, as ``rnnlab.checks`` takes it: the CLI option with no owner
    (``--steps: expected ...``), or ``arena: field`` for the others."""
    return (None, CLI_OPTIONS[field]) if field in CLI_OPTIONS else ("arena", field)


def _name(field: str) -> str:
    """How an error names a field: the CLI option, or ``arena: field`` for the others."""
    owner, name = _owner(field)
    return name if owner is None else f"{owner}: {name}"


def validate(cfg: ArenaConfig) -> None:
    """Raise naming the field when a value is out of range (before anything is written)."""
    for name in ("d_model", "n_layers", "steps", "batch", "eval_every", "eval_examples",
                 "checkpoint_every", "threads", "jobs"):
        check_int(*_owner(name), getattr(cfg, name), 1)
    for name in ("models", "tasks", "seeds"):
        values = getattr(cfg, name)
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{_name(name)}: expected a non-empty list, got {values!r}")
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:  # two runs of one name would share a run directory and a record key
            raise ValueError(f"{_name(name)}: each entry must appear once, got "
                             f"{', '.join(repeated)} more than once in {values!r}")
    for seed in cfg.seeds:
        check_int(None, "--seeds", seed, 0)
    check_choice("arena", "aggregate", cfg.aggregate, AGGREGATES)
    check_bool("arena", "mlp", cfg.mlp)
    # no upper bound given: check_number then refuses inf (as it does NaN), so each is finite
    check_number(*_owner("lr"), cfg.lr, 0, low_open=True)
    check_number("arena", "clip", cfg.clip, 0, low_open=True)
    check_number("arena", "weight_decay", cfg.weight_decay, 0)
    check_number("arena", "early_stop", cfg.early_stop, 0, 1, low_open=True, optional=True)
