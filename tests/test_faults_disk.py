"""A real full disk: the arena and ``train lm`` write into a 64 KiB tmpfs, mounted in a private
mount namespace (``unshare -rm``) where the machine allows it; elsewhere this is skipped and the
simulated ENOSPC tests (test_arena_faults, test_cli_errors, test_tools_files) stand in."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RNNLAB = str(Path(sys.executable).with_name("rnnlab"))
SCRIPT = """mount -t tmpfs -o size=64k tmpfs "$1" || exit 99
shift
"$@"; echo "rc=$?"
find "$0" -name '*tmp*' -printf 'left %p\\n'
"""


def _in_full_tmpfs(tmp_path, *command) -> subprocess.CompletedProcess:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare on this machine")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("mount namespaces are not allowed here")
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", SCRIPT, str(mount), str(mount),
                           *command], capture_output=True, text=True, timeout=300, check=False)
    if "rc=" not in proc.stdout:
        pytest.skip(f"tmpfs could not be mounted: {proc.stderr.strip()[:200]}")
    return proc


def _one_line_no_space(proc) -> None:
    assert "rc=1" in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in (proc.stdout + proc.stderr).splitlines()
              if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], proc.stderr
    assert "left " not in proc.stdout  # no temporary file stays behind


@pytest.mark.skipif(not Path(RNNLAB).exists(), reason="the rnnlab script is not installed")
def test_arena_on_a_full_disk_is_one_line_and_leaves_no_temp_files(tmp_path):
    proc = _in_full_tmpfs(tmp_path, RNNLAB, "arena", "--models", "gru", "--tasks", "parity",
                          "--seeds", "0", "--steps", "3", "--jobs", "1", "--out",
                          str(tmp_path / "disk" / "out"))
    _one_line_no_space(proc)


@pytest.mark.skipif(not Path(RNNLAB).exists(), reason="the rnnlab script is not installed")
def test_train_lm_on_a_full_disk_is_one_line_and_leaves_no_temp_files(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("the quick brown fox jumps over the lazy dog\n" * 400)
    proc = _in_full_tmpfs(tmp_path, RNNLAB, "train", "lm", "--data", str(data), "--steps", "3",
                          "--d-model", "32", "--length", "16", "--batch", "2", "--out",
                          str(tmp_path / "disk" / "lm"))
    _one_line_no_space(proc)
