"""Atomic writes, stale temporary files, the directory lock, device checks and checkpoint
integrity (issue 12: faults must never leave a half-written or silently wrong state)."""
import errno
import os
import subprocess
import sys

import pytest
import torch

from rnnlab.errors import CheckpointError, DirectoryLocked
from rnnlab.tools import checkpoint
from rnnlab.tools.device import check_device
from rnnlab.tools.files import directory_lock, remove_stale_temps, write_atomic


def test_write_atomic_leaves_no_temp_and_keeps_old_file_on_a_full_disk(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "a.json", "old")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left") as info:
        write_atomic(path, "new")
    assert info.value.filename == str(path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_concurrent_writers_use_distinct_temp_names(tmp_path):
    from rnnlab.tools.files import temp_path
    names = {temp_path(tmp_path / "x.json") for _ in range(100)}
    assert len(names) == 100


def test_remove_stale_temps(tmp_path):
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / ".checkpoint.safetensors.123.abcd1234.rnnlab-tmp").write_text("x")
    (tmp_path / ".results.jsonl.tmp").write_text("x")
    (tmp_path / "results.jsonl").write_text("{}\n")
    assert remove_stale_temps(tmp_path) == 2
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["results.jsonl"]


def test_directory_lock_is_exclusive_and_names_the_holder(tmp_path):
    with directory_lock(tmp_path, "arena"):
        with pytest.raises(DirectoryLocked, match=f"pid {os.getpid()}.*arena"):
            with directory_lock(tmp_path, "arena"):
                pass
        code = ("import sys; from rnnlab.tools.files import directory_lock\n"
                "try:\n    directory_lock(sys.argv[1]).__enter__()\n"
                "except ValueError as e:\n    print(e); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                              text=True)
        assert proc.returncode == 3 and "in use by another rnnlab process" in proc.stdout
    with directory_lock(tmp_path):  # released
        pass


def test_directory_lock_is_released_when_its_holder_is_killed(tmp_path):
    code = ("import sys, time; from rnnlab.tools.files import directory_lock\n"
            "held = directory_lock(sys.argv[1]); held.__enter__(); print('held', flush=True); "
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(DirectoryLocked):
        with directory_lock(tmp_path):
            pass
    proc.kill()
    proc.wait()
    with directory_lock(tmp_path):
        pass


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "", "meta"])
def test_check_device_refuses_unknown_devices(value):
    with pytest.raises(ValueError, match="--device"):
        check_device(value)


def test_check_device_refuses_absent_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="--device: 'cuda' is not available"):
        check_device("cuda")
    assert check_device("cpu") == torch.device("cpu")


def _objects(seed=0, out=4):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, out), torch.nn.Linear(out, 2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return model, opt, {"data": torch.Generator().manual_seed(seed)}


def _snapshot(model, opt, gens):
    return ([t.clone() for t in model.state_dict().values()],
            [s[k].clone() for _, s in sorted(opt.state_dict()["state"].items()) for k in sorted(s)],
            gens["data"].get_state().clone())


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a[0] + a[1] + [a[2]], b[0] + b[1] + [b[2]]))


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, *_objects(0), {"step": 7})
    fresh = _objects(1)
    assert checkpoint.load(path, *fresh) == {"step": 7}
    assert _same(_snapshot(*fresh), _snapshot(*_objects(0)))


def _damage(path, how):
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "flipped":
        path.write_bytes(raw[:-3] + bytes([raw[-3] ^ 1]) + raw[-2:])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "foreign":
        from safetensors.torch import save_file
        save_file({"weight": torch.zeros(2)}, str(path))


@pytest.mark.parametrize("how", ["truncated", "flipped", "garbage", "empty", "foreign"])
def test_damaged_checkpoint_is_refused_before_anything_is_loaded(tmp_path, how):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, *_objects(0), {"step": 7})
    _damage(path, how)
    fresh = _objects(1)
    before = _snapshot(*fresh)
    with pytest.raises(CheckpointError, match="c.safetensors: unusable checkpoint") as info:
        checkpoint.load(path, *fresh)
    assert info.value.corrupt and _same(before, _snapshot(*fresh))


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, *_objects(0, out=4), {"step": 7})
    with pytest.raises(CheckpointError, match="another model"):
        checkpoint.load(path, *_objects(0, out=5))


def test_load_or_restart_moves_a_damaged_checkpoint_aside(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, *_objects(0), {"step": 7})
    _damage(path, "flipped")
    warnings = []
    assert checkpoint.load_or_restart(path, *_objects(1), warn=warnings.append) is None
    assert not path.exists() and (tmp_path / "c.safetensors.corrupt").exists()
    assert len(warnings) == 1 and "restarting this run from step 0" in warnings[0]


def test_checkpoint_past_the_step_budget_is_refused_not_finished(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, *_objects(0), {"step": 7})
    with pytest.raises(CheckpointError, match="step 7, past the step budget 5") as info:
        checkpoint.load_or_restart(path, *_objects(1), warn=print, max_step=5)
    assert not info.value.corrupt and path.exists()
