"""Data-parallel training under ``torchrun``: the process group, batch sharding, rank-0 writes.

``torchrun --nproc-per-node N`` starts N copies of a command with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` (and the rendezvous address) in their environment. ``setup`` reads them and joins
the process group (gloo on CPU, nccl on CUDA); without them it returns the single-process
``World`` and every helper here is the identity, so a plain run is untouched.

How a distributed run stays equal to a single-process one with the same global batch:

- every rank draws the whole global batch from the same seeded generator (cheap: indices) and
  keeps its own contiguous slice (``shard``): the data order, and the generator state a
  checkpoint stores, are the single-process run's;
- DistributedDataParallel averages the gradients of the per-rank mean losses, which is the
  gradient of the global mean loss (equal slices); FSDP2 (``fully_shard``) reduces the same way;
- decisions that could differ between ranks (the time budget, a non-finite loss) are taken on
  values all ranks share (``any_rank``, ``mean``), so no rank leaves the loop alone and hangs
  the others in a collective;
- only rank 0 writes (``main_first``, ``main_context``, ``full_state``); the others print nothing
  (``quiet``) and read the checkpoint only after rank 0 has vetted it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import os
import pickle
from typing import Callable, ContextManager, Iterator, Optional, Tuple

import torch
from rich.console import Console

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False  # under torchrun: a process group was joined
    device: torch.device = torch.device("cpu")  # where this rank's collectives' tensors live

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs and writes."""
        return self.rank == 0


SINGLE = World()


def from_env(environ=None) -> World:
    """The ``World`` torchrun describes in ``environ``; ``SINGLE`` when none of its variables
    are set. A partial or malformed set is refused, naming the variable."""
    environ = os.environ if environ is None else environ
    present = [k for k in LAUNCH_VARS if k in environ]
    if not present:
        return SINGLE
    missing = [k for k in LAUNCH_VARS if k not in environ]
    if missing:
        raise ValueError(f"torchrun environment: {', '.join(present)} set but {', '.join(missing)} "
                         f"not; launch with `torchrun --nproc-per-node N rnnlab ...`")
    values = {}
    for key in LAUNCH_VARS:
        try:
            values[key] = int(environ[key])
        except ValueError:
            raise ValueError(f"{key}: expected an integer, got {environ[key]!r}") from None
    rank, size, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK: expected 0 <= RANK < WORLD_SIZE and "
                         f"LOCAL_RANK >= 0, got {rank}/{size}/{local}")
    return World(rank, size, local, launched=True)


def setup(device: torch.device) -> Tuple[World, torch.device]:
    """Join torchrun's process group when launched by it; this rank's ``World`` and device
    (``cuda`` becomes ``cuda:LOCAL_RANK``). Single process: ``(SINGLE, device)``, nothing done."""
    world = from_env()
    if not world.launched:
        return world, device
    import torch.distributed as dist
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"--device: under torchrun each process takes cuda:LOCAL_RANK; "
                             f"give --device cuda, got {str(device)!r}")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"--device: distributed training runs on cpu (gloo) or cuda (nccl), "
                         f"got {str(device)!r}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=world.rank, world_size=world.size)
    return dataclasses.replace(world, device=device), device


def teardown(world: World, finished: bool = True) -> None:
    """Leave the process group ``setup`` joined (nothing for a single process). ``finished``:
    every rank got here normally, so they can wait for each other first (after an error a peer
    may never come, and waiting would hang the job)."""
    import torch.distributed as dist
    if not (world.launched and dist.is_initialized()):
        return
    if finished:
        dist.barrier()  # no rank closes its connections while a peer is still using them
    # FSDP2's hooks form reference cycles that keep the gloo group (and its worker threads)
    # alive until interpreter exit, where destroying it aborted 1 run in 10 on a loaded
    # 2-core machine ("terminate called without an active exception"): free them now.
    gc.collect()
    dist.destroy_process_group()


def check_batch(batch: int, world: World, name: str = "--batch") -> None:
    """The global batch must split evenly: equal slices make the averaged gradient the
    single-process one."""
    if batch % world.size:
        raise ValueError(f"{name}: expected a multiple of the {world.size} processes (torchrun "
                         f"--nproc-per-node), got {batch}")


def shard(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous slice of a global batch ``(B, ...)`` -> ``(B / size, ...)``."""
    if world.size == 1:
        return batch
    n = batch.shape[0] // world.size
    return batch.narrow(0, world.rank * n, n)


def mean(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a scalar over the ranks (identical on all), detached; ``value`` itself for a
    single process."""
    if world.size == 1:
        return value
    import torch.distributed as dist
    total = value.detach().clone().to(world.device)
    dist.all_reduce(total)
    return total / world.size


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when ``flag`` is True on some rank (one rank's clock past the budget
    stops them all at the same step)."""
    if world.size == 1:
        return flag
    import torch.distributed as dist
    value = torch.tensor([int(flag)], device=world.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def main_first(world: World, fn: Callable[[], object]) -> object:
    """``fn()`` on rank 0 only (its value there; None elsewhere). If it raises, every rank
    raises the same error, so no rank waits in a collective for a rank 0 that has given up."""
    if world.size == 1:
        return fn()
    import torch.distributed as dist
    outcome, value = [None], None
    if world.main:
        try:
            value = fn()
        except BaseException as err:
            outcome[0] = _portable(err)
            dist.broadcast_object_list(outcome, src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise outcome[0]
    return value


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling, else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"rank 0: {type(err).__name__}: {err}")


@contextlib.contextmanager
def main_context(world: World, factory: Callable[[], ContextManager], other) -> Iterator:
    """Enter ``factory()`` on rank 0 (e.g. claiming the output directory) and yield its value;
    the other ranks yield ``other``. A failure to enter is raised on every rank."""
    with contextlib.ExitStack() as stack:
        value = main_first(world, lambda: stack.enter_context(factory()))
        yield value if world.main else other


def broadcast(value, world: World):
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if world.size == 1:
        return value
    import torch.distributed as dist
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def quiet(console: Console, world: World) -> Console:
    """``console`` on rank 0; a console that prints nothing on the others."""
    return console if world.main else Console(quiet=True, file=open(os.devnull, "w"))


@dataclasses.dataclass
class Parallel:
    """A model made data-parallel. ``model`` is what training calls (the DDP wrapper, or the
    module sharded in place); ``optimizer`` steps the module's parameters; ``full_state()``
    (called by every rank) returns, on rank 0 only, a module and optimizer holding the full,
    unsharded state, for the checkpoint and the final model."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    full_state: Callable[[], Optional[Tuple[torch.nn.Module, torch.optim.Optimizer]]]


def parallel(lm: torch.nn.Module, opt: torch.optim.Optimizer, world: World,
             fsdp: bool = False, make_opt: Optional[Callable] = None) -> Parallel:
    """``lm`` and its optimizer (already resumed, identically on every rank) made data-parallel:
    DistributedDataParallel, or FSDP2 (``fully_shard`` per block, then the root) when ``fsdp``;
    FSDP2 replaces the parameters, so ``make_opt(parameters)`` builds the optimizer anew.
    Single process: returned as they are."""
    if not world.launched:
        return Parallel(lm, opt, lambda: (lm, opt))
    if not fsdp:
        from torch.nn.parallel import DistributedDataParallel
        ids = [world.device] if world.device.type == "cuda" else None
        ddp = DistributedDataParallel(lm, device_ids=ids)
        # The replicas are equal after every step, so rank 0's copy is the full state.
        return Parallel(ddp, opt, lambda: (lm, opt) if world.main else None)
    return _fully_shard(lm, opt, world, make_opt)


def _fully_shard(lm, opt, world: World, make_opt: Callable) -> Parallel:
    """FSDP2. Every rank holds the full resumed state and keeps its shard; ``full_state``
    gathers the shards back, tensor by tensor, in an order every rank agrees on: a resumed
    AdamW state lists its keys in the order safetensors returned them, which differs from
    process to process, and a gather in dict order paired rank 0's exp_avg with rank 1's
    exp_avg_sq (``torch.distributed.checkpoint.state_dict``'s full-state helpers, given that
    state, returned wrong moments the same way)."""
    from torch.distributed.fsdp import fully_shard
    resumed = opt.state_dict()["state"]  # {index: {name: full tensor}}, equal on every rank
    # Rank 0 keeps an unsharded copy to gather the state into for checkpoints and the end.
    shadow = copy.deepcopy(lm).cpu() if world.main else None
    shadow_opt = make_opt(shadow.parameters()) if world.main else None
    for block in getattr(lm, "blocks", []):
        fully_shard(block)
    fully_shard(lm)
    sharded_opt = make_opt(lm.parameters())
    for index, param in enumerate(lm.parameters()):  # each rank keeps its shard of the moments
        if index in resumed:
            sharded_opt.state[param] = {k: _shard_like(v, param) for k, v in
                                        resumed[index].items()}

    def full_state():
        # Every rank walks the same tensors in the same order (each gather is a collective).
        weights = {k: _gathered(v) for k, v in lm.state_dict().items()}
        state = {i: {k: _gathered(v) for k, v in sorted(sharded_opt.state[p].items())}
                 for i, p in enumerate(lm.parameters()) if p in sharded_opt.state}
        if not world.main:
            return None
        shadow.load_state_dict(weights)
        shadow_opt.load_state_dict({"state": state,
                                    "param_groups": shadow_opt.state_dict()["param_groups"]})
        return shadow, shadow_opt

    return Parallel(lm, sharded_opt, full_state)


def _gathered(value):
    """The full tensor of a sharded ``value`` (a collective: an all-gather, padded for uneven
    shards), on the CPU; others copied."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    if not isinstance(value, DTensor):
        return value.detach().clone().cpu() if torch.is_tensor(value) else value
    mesh, local = value.device_mesh, value.to_local().detach()
    rows = -(-value.shape[0] // mesh.size())  # torch.chunk's piece size: ceil(n / ranks)
    padded = local.new_zeros((rows,) + tuple(value.shape[1:]))
    padded[:local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in range(mesh.size())]
    dist.all_gather(pieces, padded, group=mesh.get_group())
    return torch.cat(pieces)[:value.shape[0]].cpu()  # (N, ...) without the padding


def _shard_like(value, param):
    """This rank's shard of a full optimizer tensor shaped like the sharded ``param`` (FSDP2
    splits dim 0 as ``torch.chunk`` does); other values copied. Cut locally: every rank holds
    the full tensor, so no collective (and no agreement on the order of keys) is needed."""
    from torch.distributed.tensor import DTensor, Shard
    if not torch.is_tensor(value) or tuple(value.shape) != tuple(param.shape):
        return value.clone() if torch.is_tensor(value) else value
    assert tuple(param.placements) == (Shard(0),), param.placements  # FSDP2's layout
    mesh = param.device_mesh
    pieces = torch.chunk(value, mesh.size(), dim=0)
    rank = mesh.get_local_rank()
    local = pieces[rank] if rank < len(pieces) else value[:0]  # uneven: the last ranks get none
    local = local.clone().to(param.to_local().device)
    assert local.shape == param.to_local().shape, (local.shape, param.to_local().shape)
    return DTensor.from_local(local, mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())
