"""`rnnlab train lm` data-parallel under torchrun, 2 CPU processes (gloo): the same run as one
process with the same global batch, only rank 0 writes, a killed run resumes to the same end."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file

from rnnlab.train import distributed
from rnnlab.train.lm import LMConfig, run

# Run by torchrun in each rank: trains with the LMConfig given as JSON, records every file-system
# write under --out (rank 0 must make some, the others none), and, with "kill_at", dies right
# after rank 0 has written the checkpoint of that step (as a killed job would).
WORKER = r'''
import builtins, io, json, os, sys
import torch
torch.set_num_threads(1)
from rich.console import Console
from rnnlab.tools import checkpoint
from rnnlab.train.lm import LMConfig, run

args = json.loads(sys.argv[1])
rank = os.environ["RANK"]
out = os.path.realpath(args["cfg"]["out"])
writes = []

def watch(fn, writing):
    def wrapped(path, *a, **k):
        if isinstance(path, (str, os.PathLike)) and writing(a, k) \
                and (os.path.realpath(path) + os.sep).startswith(out + os.sep):
            writes.append(f"{fn.__name__} {os.fspath(path)}")
        return fn(path, *a, **k)
    return wrapped

opening = lambda a, k: any(c in (a[0] if a else k.get("mode", "r")) for c in "wax+")
flags = lambda a, k: bool(a and a[0] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
builtins.open = io.open = watch(builtins.open, opening)
os.open = watch(os.open, flags)
for name in ("replace", "rename", "mkdir", "unlink", "remove", "rmdir"):
    setattr(os, name, watch(getattr(os, name), lambda a, k: True))

if args.get("kill_at") is not None:
    save = checkpoint.save
    def save_then_die(path, model, opt, gens, meta):
        save(path, model, opt, gens, meta)
        if meta["step"] == args["kill_at"]:
            os._exit(3)
    checkpoint.save = save_then_die

log = args["log"]
with open(f"{log}.console{rank}", "w") as f:
    result = run(LMConfig(**args["cfg"]), Console(file=f, width=120))
with open(f"{log}.writes{rank}", "w") as f:
    json.dump(writes, f)
with open(f"{log}.result{rank}", "w") as f:
    json.dump(result, f)
'''

STEPS = 6


def tiny(out, **kw) -> dict:
    return {**dict(max_chars=20_000, d_model=16, n_layers=1, length=16, batch=4, steps=STEPS,
                   minutes=5, eval_every=1, eval_windows=2, sample_chars=10, out=str(out)), **kw}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path, cfg: dict, name: str, kill_at=None, nproc: int = 2):
    """Run WORKER under ``python -m torch.distributed.run``; the completed process."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = str(tmp_path / name)
    args = json.dumps({"cfg": cfg, "log": log, "kill_at": kill_at})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
         "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script), args],
        env=env, capture_output=True, text=True, timeout=120)


def checked(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def history(out):
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as f:
        return json.loads(f.metadata()["meta"])["history"]


def assert_same_run(got, want, train_curve=True):
    """Equal checkpoints (weights, AdamW moments, data generator) and curves, to fp32."""
    a, b = load_file(str(got / "checkpoint.safetensors")), load_file(str(want / "checkpoint."
                                                                             "safetensors"))
    assert a.keys() == b.keys()
    assert torch.equal(a["rng.data"], b["rng.data"])  # the same windows were drawn
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    ha, hb = history(got), history(want)
    assert [h["step"] for h in ha] == [h["step"] for h in hb] == list(range(1, STEPS + 1))
    fields = ("val_bpc", "train_bpc") if train_curve else ("val_bpc",)
    for field in fields:
        torch.testing.assert_close(torch.tensor([h[field] for h in ha]),
                                   torch.tensor([h[field] for h in hb]), rtol=1e-5, atol=0)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process run every distributed one must equal."""
    out = tmp_path_factory.mktemp("single")
    result = run(LMConfig(**tiny(out)), Console(file=open(os.devnull, "w")))
    return out, result


def test_ddp_equals_one_process_and_only_rank0_writes(tmp_path, single):
    ref, ref_result = single
    out = tmp_path / "ddp"
    checked(torchrun(tmp_path, tiny(out), "ddp"))
    assert_same_run(out, ref)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    writes = [json.loads((tmp_path / f"ddp.writes{r}").read_text()) for r in (0, 1)]
    assert writes[0] and writes[1] == []  # the watch sees rank 0's writes, and none of rank 1's
    console = [(tmp_path / f"ddp.console{r}").read_text() for r in (0, 1)]
    assert "validation" in console[0] and console[1] == ""
    results = [json.loads((tmp_path / f"ddp.result{r}").read_text()) for r in (0, 1)]
    assert results[0] == results[1]  # every rank returns rank 0's metrics
    assert results[0]["val_bpc"] == pytest.approx(ref_result["val_bpc"], rel=1e-5)


def test_killed_run_resumes_to_the_uninterrupted_end(tmp_path, single):
    ref, _ = single
    out = tmp_path / "killed"
    killed = torchrun(tmp_path, tiny(out), "killed", kill_at=3)
    assert killed.returncode != 0
    assert [h["step"] for h in history(out)] == [1, 2, 3]
    # Resumed with FSDP2: every rank reads the (single-process format) checkpoint and keeps its
    # shard of the weights and AdamW moments; no DDP broadcast hides a rank that read it wrong.
    checked(torchrun(tmp_path, tiny(out, fsdp=True), "resumed"))
    assert "resuming from step 3" in (tmp_path / "resumed.console0").read_text()
    # The running train-loss mean restarts with a process, so only validation is compared.
    assert_same_run(out, ref, train_curve=False)


def test_fsdp_equals_one_process(tmp_path, single):
    """FSDP2 (fully_shard) works on CPU with gloo in torch 2.13: same run, same checkpoint."""
    ref, _ = single
    out = tmp_path / "fsdp"
    checked(torchrun(tmp_path, tiny(out, fsdp=True), "fsdp"))
    assert_same_run(out, ref)
    assert json.loads((tmp_path / "fsdp.writes1").read_text()) == []


def test_batch_must_split_and_fsdp_needs_torchrun(tmp_path):
    proc = torchrun(tmp_path, tiny(tmp_path / "odd", batch=3), "odd")
    assert proc.returncode != 0
    assert "--batch: expected a multiple of the 2 processes" in proc.stdout + proc.stderr
    assert not (tmp_path / "odd").exists()  # refused before a file is written
    with pytest.raises(ValueError, match="--fsdp: .*torchrun"):
        run(LMConfig(**tiny(tmp_path / "x", fsdp=True)), Console(file=open(os.devnull, "w")))


def test_world_from_env_and_sharding():
    assert distributed.from_env({}) == distributed.SINGLE
    world = distributed.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.main, world.launched) == (1, 2, False, True)
    batch = torch.arange(8).reshape(4, 2)
    assert torch.equal(distributed.shard(batch, world), batch[2:])
    assert distributed.shard(batch, distributed.SINGLE) is batch
    with pytest.raises(ValueError, match="LOCAL_RANK not"):
        distributed.from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE: expected an integer, got 'two'"):
        distributed.from_env({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="got 2/2/0"):
        distributed.from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="--batch: expected a multiple of the 3 .* got 4"):
        distributed.check_batch(4, distributed.World(0, 3, 0, True))
