"""probes.locks: one writer per directory, across real processes; stale locks are taken over."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from probes import locks
from probes.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HOLDER = textwrap.dedent("""
    import sys, time
    from probes import locks
    with locks.hold(sys.argv[1], what=sys.argv[2]):
        print("held", flush=True)
        time.sleep(120)
""")


def holder_process(directory: Path, what: str = "run") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), what], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_with_the_holders_host_and_pid(tmp_path):
    proc = holder_process(tmp_path / "d", "dataset")
    try:
        with pytest.raises(UserError, match=rf"in use by dataset writer PID {proc.pid} on host "
                                            rf"{socket.gethostname()} .*wait for it to finish"), \
                locks.hold(tmp_path / "d"):
            pass
    finally:
        proc.kill()
        proc.wait()
    with locks.hold(tmp_path / "d") as stale:  # the kernel dropped the dead holder's lock: taken over
        assert stale is not None and stale.pid == proc.pid and not stale.is_alive()
        assert json.loads((tmp_path / "d" / locks.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_clean_release_leaves_no_holder_and_removes_a_directory_it_created(tmp_path):
    with locks.hold(tmp_path / "new") as stale:
        assert stale is None and locks.is_held(tmp_path / "new")
        with locks.hold(tmp_path / "new"):  # nested in one process: allowed
            pass
        assert locks.is_held(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with locks.hold(tmp_path / "kept"):
        (tmp_path / "kept" / "data").write_text("x")
    assert locks.read_holder(tmp_path / "kept") is None and (tmp_path / "kept" / "data").exists()


def test_without_os_locks_the_recorded_holder_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(38, "Function not implemented")  # ENOSYS: a file system without flock

    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    d = tmp_path / "d"
    d.mkdir()
    live = {"host": socket.gethostname(), "pid": os.getppid(), "started": 0, "what": "run"}
    (d / locks.LOCK_FILE).write_text(json.dumps(live))
    with pytest.raises(UserError, match=f"PID {os.getppid()}"), locks.hold(d):
        pass
    remote = {**live, "host": "elsewhere-" + socket.gethostname()}  # cannot be checked: kept
    (d / locks.LOCK_FILE).write_text(json.dumps(remote))
    with pytest.raises(UserError, match="on host elsewhere-"), locks.hold(d):
        pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (d / locks.LOCK_FILE).write_text(json.dumps({**live, "pid": int(dead.stdout)}))
    with locks.hold(d) as stale:  # a dead PID on this host: stale, taken over
        assert stale.pid == int(dead.stdout)


def test_a_file_in_place_of_the_directory_is_a_user_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a directory"), locks.hold(tmp_path / "f"):
        pass


def test_two_probes_train_on_one_out_the_second_is_refused(tmp_path):
    """A live run holds its directory: a second `probes train` there exits 2 naming the holder."""
    proc = holder_process(tmp_path / "run")  # stands for a live trainer: the same lock train_run holds
    try:
        r = subprocess.run([sys.executable, "-c", "from cli import app; app()", "train", "--model", "pythia-tiny",
                            "--n", "4", "--train-size", "40", "--eval-size", "8", "--max-steps", "2",
                            "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (r.stderr.strip().splitlines() or [""])[0]  # one line
    assert f"in use by run writer PID {proc.pid}" in r.stderr and "Traceback" not in r.stderr


def _endless_sweep(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    """A `probes sweep` of one tiny CPU run that would go on for a million steps, and that run's directory."""
    sweep = subprocess.Popen(
        [sys.executable, "-c", "from cli import app; app()", "sweep", "--out", str(tmp_path / "s"), "--model",
         "pythia-tiny", "--n", "4", "--lr", "1e-3", "--init", "default", "--set", "max_steps=1000000",
         "--set", "train_size=40", "--set", "eval_size=8", "--set", "batch_size=4", "--set", "device=cpu",
         *extra, "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return sweep, tmp_path / "s" / "pythia-tiny+suffix+n4+lr1e-3+default+s0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sweep_workers_die_with_a_sweep_killed_by_sigkill(tmp_path):
    import signal
    import time

    sweep, run = _endless_sweep(tmp_path)
    worker = None
    for _ in range(1200):  # until the worker holds its run's lock (it names itself there)
        worker = locks.read_holder(run)
        if worker is not None and worker.pid != sweep.pid:
            break
        time.sleep(0.25)
    assert worker is not None, "the worker never started"
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    for _ in range(400):
        if not locks.pid_alive(worker.pid):
            break
        time.sleep(0.05)
    else:
        os.kill(worker.pid, signal.SIGKILL)
        pytest.fail("the worker outlived its sweep")
    with locks.hold(run):  # a rerun takes the run over
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_sweep_stopped_by_sigterm_has_its_workers_checkpoint_and_exits_143(tmp_path):
    import signal
    import time

    import torch

    sweep, run = _endless_sweep(tmp_path, "--set", "eval_every=1000", "--set", "checkpoint_every=1000000")
    worker = None
    for _ in range(1200):  # until the worker has evaluated step 0 (its SIGTERM handler is then in place)
        worker = locks.read_holder(run)
        if worker is not None and worker.pid != sweep.pid and (run / "metrics.parquet").exists():
            break
        time.sleep(0.25)
    assert worker is not None, "the worker never started"
    time.sleep(1.0)  # a few training steps
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=120) == 143
    assert not locks.pid_alive(worker.pid)  # the sweep waited for it
    summary = json.loads((run / "summary.json").read_text())
    step = torch.load(run / "checkpoint" / "state.pt", weights_only=True)["step"]
    assert summary["status"] == "running" and f"stopped by SIGTERM at step {step}" in summary["message"]
    assert step > 0  # the steps since step 0 were kept, though no checkpoint was due before step 1,000,000
    assert locks.read_holder(run) is None  # released, not left to be taken over


def test_on_sigterm_hands_sigterm_to_the_handler_inside_the_block_and_restores_the_previous_one():
    import signal

    got, before = [], signal.getsignal(signal.SIGTERM)
    with locks.on_sigterm(lambda signum, frame: got.append(signum)):
        os.kill(os.getpid(), signal.SIGTERM)
    assert got == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) == before
