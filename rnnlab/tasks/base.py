"""The task contract: a seeded generator of ``(inputs, targets, mask)`` with a loss and a metric.

A task is a small frozen dataclass whose fields are its parameters (``mod_arith(brackets=True)``).
Subclasses set the class attributes below and implement ``_sample``; everything else (argument
checks, seeds, loss, metric, decoding for ``rnnlab tasks show``) lives here once.

Shapes (alphabet of DESIGN.md): token tasks give ``inputs (B, T)`` long in ``[0, vocab_size)``,
``targets (B, T)`` long in ``[0, n_outputs)``; real-valued tasks give ``inputs (B, T, vocab_size)``
float and ``targets (B, T, n_outputs)`` float. ``mask (B, T)`` bool marks the scored positions;
a model's output is ``(B, T, n_outputs)`` (logits, or predictions for real-valued tasks).

Pointer tasks (``kind="pointer"``, ``tasks/pointer.py``) answer with positions of their input:
``length`` is the number n of input elements, ``inputs (B, n, vocab_size)`` float,
``targets (B, L_out)`` long in ``[0, n + n_outputs)`` where ``0..n-1`` point at inputs and the
``n_outputs`` extra choices follow them (index ``n`` is the end marker), ``mask (B, L_out)``;
a model's output is pointer logits ``(B, L_out, n + n_outputs)``, scored like token logits.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Dict, List, Optional, Tuple, Type

import torch

# check_int and check_choice are the task modules' argument checks too, the task's name as the
# owner: check_int("mqar", "pairs", 0, 1) -> "mqar: pairs must be an int >= 1, got 0".
from ..checks import check_choice, check_int, did_you_mean
from . import metrics

Sample = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]

SPLITS = ("train", "test")


def generator(seed: int, split: str) -> torch.Generator:
    """The data generator for ``seed`` and ``split``. Train seeds are even, test seeds odd, so
    no train stream equals any test stream (SelectivBench's reference reuses its train seed)."""
    check_choice("tasks.generator", "split", split, SPLITS)
    check_int("tasks.generator", "seed", seed, 0)
    return torch.Generator().manual_seed(2 * seed + SPLITS.index(split))


@dataclasses.dataclass(frozen=True)
class Task:
    """Base of every task. Class attributes a subclass sets:

    - ``name``: registry name; ``kind``: ``"tokens"``, ``"real"`` or ``"pointer"``;
    - ``metric``: a name in ``rnnlab.tasks.metrics.METRICS``;
    - ``train_lengths``: ``(min, max)`` inclusive, the lengths a training batch is drawn from;
    - ``test_lengths``: lengths evaluated after training (the first is the train length);
    - ``min_length``: the shortest ``length`` ``sample`` accepts;
    - ``extra_metrics``: metrics reported beside ``metric`` (the arena records them too).

    Properties a subclass defines (they may depend on its fields): ``vocab_size`` (input tokens, or
    input channels for real tasks), ``n_outputs`` (classes, or output channels; the input tokens
    by default) and, only where the default does not hold, ``chance``.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "tokens"
    metric: ClassVar[str] = "accuracy"
    train_lengths: ClassVar[Tuple[int, int]] = (16, 64)
    test_lengths: ClassVar[Tuple[int, ...]] = (64, 128, 256)
    min_length: ClassVar[int] = 1
    extra_metrics: ClassVar[Tuple[str, ...]] = ()

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def n_outputs(self) -> int:
        return self.vocab_size  # outputs are input tokens unless a task says otherwise

    @property
    def chance(self) -> float:
        """The accuracy of a uniform guess, which ``scaled_accuracy`` maps to 0: ``1 / n_outputs``
        for token tasks. A task whose answers use only some of its classes overrides it."""
        if self.kind != "tokens":  # real: the R² of the best constant guess is 0; pointer: the
            return 0.0  # n + n_outputs choices depend on the length n, no one value holds
        return 1 / self.n_outputs

    # --- what a subclass implements -------------------------------------------------------
    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        raise NotImplementedError

    def prefix(self, inputs: torch.Tensor) -> Optional[torch.Tensor]:
        """The context of each sample, for models in prefix mode (JRT-RNN, ``nn/prefix.py``):
        ``(B,)`` long, the steps ``[0, M)`` of ``inputs (B, T, ...)`` that they may read
        non-causally (no scored position may lie in them). None: the task has no context
        prefix; a task that has one overrides this (``has_prefix``)."""
        return None

    @property
    def has_prefix(self) -> bool:
        """Whether the task gives a context prefix (overrides ``prefix``)."""
        return type(self).prefix is not Task.prefix

    def decode(self, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> str:
        """One example (``inputs (T,)``, ``targets (T,)``, ``mask (T,)``) as readable text."""
        shown = [int(t) if m else "_" for t, m in zip(targets.tolist(), mask.tolist())]
        return f"input : {inputs.tolist()}\ntarget: {shown}"

    # --- shared ---------------------------------------------------------------------------
    def sample(self, batch: int, length: int, generator: torch.Generator) -> Sample:
        """``(inputs, targets, mask)`` for ``batch`` sequences of exactly ``length`` steps
        (``set_disjointness(reads=k)``: ``length`` is one read's, see its docstring)."""
        check_int(f"{self.name}.sample", "batch", batch, 1)
        check_int(f"{self.name}.sample", "length", length, self.min_length)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"{self.name}.sample: generator must be a torch.Generator, "
                            f"got {type(generator).__name__}")
        x, y, mask = self._sample(batch, length, generator)
        return x, y, mask.bool()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (token and pointer tasks) or mean squared error (real tasks) on scored
        positions."""
        if self.kind == "real":
            return torch.nn.functional.mse_loss(outputs[mask], targets[mask].to(outputs.dtype))
        return torch.nn.functional.cross_entropy(outputs[mask].float(), targets[mask])

    def score(self, outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
        """The task's metric on a batch of model outputs ``(B, T, n_outputs)``."""
        return metrics.compute(self.metric, outputs, targets, mask, chance=self.chance)

    @property
    def metric_names(self) -> Tuple[str, ...]:
        """The task's metric, then its ``extra_metrics``."""
        return (self.metric, *self.extra_metrics)

    def scores(self, outputs: torch.Tensor, targets: torch.Tensor,
               mask: torch.Tensor) -> Dict[str, float]:
        """``{metric: value}`` for the task's metric (``score``) and its ``extra_metrics``, on
        one batch."""
        extra = {name: metrics.compute(name, outputs, targets, mask, chance=self.chance)
                 for name in self.extra_metrics}
        return {self.metric: self.score(outputs, targets, mask), **extra}

    def params(self) -> Dict[str, object]:
        """The task's parameters (its dataclass fields), for records and tables."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{self.name}({args})"


# --- registry -------------------------------------------------------------------------------
_REGISTRY: Dict[str, Type[Task]] = {}


def register(cls: Type[Task]) -> Type[Task]:
    """Class decorator: register a task under its ``name``."""
    if not cls.name:
        raise ValueError(f"task class {cls.__qualname__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"task name {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def task_class(name: str) -> Type[Task]:
    """The class registered as ``name`` (its fields are the task's parameters)."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"task: unknown name {name!r}{did_you_mean(name, available())}; "
                         f"available: {', '.join(available())}")
    return _REGISTRY[name]


def get(name: str, **params) -> Task:
    """Build the task registered as ``name``: ``get("mod_arith", brackets=True)``. Each task
    checks its parameters' types and ranges itself (``check_int``, ``check_choice``)."""
    cls = task_class(name)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ValueError(f"task {name!r}: unknown parameter(s) {unknown}"
                         f"{did_you_mean(unknown[0], fields)}; it takes {sorted(fields) or 'none'}")
    return cls(**params)


def check_tokens(task: "Task", inputs) -> None:
    """What a task's ``label`` reads: a long tensor ``(B, T)`` of tokens in
    ``[0, vocab_size)``; anything else is refused naming ``inputs`` (a negative token would
    index from the end and give a wrong label, not an error)."""
    owner = f"{task.name}.label: inputs"
    if not isinstance(inputs, torch.Tensor) or inputs.dtype != torch.long:
        got = inputs.dtype if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise TypeError(f"{owner}: expected a torch.long tensor (B, T) of tokens, got {got}")
    if inputs.dim() != 2:
        raise ValueError(f"{owner}: expected shape (B, T), got {tuple(inputs.shape)}")
    if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= task.vocab_size):
        raise ValueError(f"{owner}: expected tokens in [0, {task.vocab_size - 1}], got "
                         f"[{int(inputs.min())}, {int(inputs.max())}]")


def available() -> List[str]:
    """Names of all registered tasks, sorted."""
    return sorted(_REGISTRY)
