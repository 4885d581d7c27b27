"""One owner per run folder (lmlab.runlock): a live owner is refused before anything is touched, a lock left by a
dead process is taken over, a lock from another host is refused unless forced; and through `lmlab pretrain`, a
second writer on a live run is refused while the live run finishes exactly as an undisturbed one."""

import json
import socket
import subprocess
import sys
import time

import pytest
import yaml

from lmlab.cli import main
from lmlab.runlock import LOCK_FILE, RunLock
from lmlab.utils import LmlabError


def write_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                "started": time.time(), "command": "lmlab pretrain"}))


def test_lock_is_taken_and_released(tmp_path):
    with RunLock(tmp_path / "r", "test"):
        owner = json.loads((tmp_path / "r" / LOCK_FILE).read_text())
        assert owner["pid"] > 0 and owner["host"] == socket.gethostname()
        with RunLock(tmp_path / "r", "test"):  # the same process may nest
            pass
        assert (tmp_path / "r" / LOCK_FILE).exists()
    assert not (tmp_path / "r" / LOCK_FILE).exists()


def test_a_live_owner_is_refused_and_a_dead_one_taken_over(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "r", sleeper.pid)
        with pytest.raises(LmlabError, match=rf"in use by lmlab pretrain \(pid {sleeper.pid} on"):
            RunLock(tmp_path / "r", "test").__enter__()
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(tmp_path / "r", "test"):  # the owner is gone: its lock is stale
        assert json.loads((tmp_path / "r" / LOCK_FILE).read_text())["command"] == "test"
    assert "taking over the lock" in caplog.text


def test_a_lock_from_another_host_is_refused_unless_forced(tmp_path):
    write_lock(tmp_path / "r", 12345, host="elsewhere.example")
    with pytest.raises(LmlabError, match="pid 12345 on elsewhere.example.*--force-unlock"):
        RunLock(tmp_path / "r", "test").__enter__()
    with RunLock(tmp_path / "r", "test", force=True):
        pass


def test_a_second_pretrain_on_a_live_run_is_refused_and_the_live_run_finishes_undisturbed(tmp_path, capsys):
    cfg = {"model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "seq_len": 32},
           "data": {"buffer_docs": 16},
           "train": {"batch_size": 4, "max_steps": 200, "warmup": 2, "lr": 1e-2, "save_every": 20, "eval_every": 0,
                     "log_every": 10, "device": "cpu", "threads": 1, "progress": False, "tensorboard": False}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["pretrain", "--config", str(path), "--out", str(tmp_path / "alone")]) == 0
    live = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "pretrain", "--config", str(path), "--out",
                             str(tmp_path / "live")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list((tmp_path / "live").glob("step_*")) and time.time() < deadline:  # it is writing checkpoints
        time.sleep(0.05)
    capsys.readouterr()
    for args in ([], ["--resume"]):  # a fresh start and a resume beside the live run
        assert main(["pretrain", "--config", str(path), "--out", str(tmp_path / "live"), *args]) == 2
        assert "in use by lmlab pretrain" in capsys.readouterr().err
    assert live.wait(timeout=120) == 0, live.stderr.read()
    from lmlab import checkpoint as ck

    a, _ = ck.load(tmp_path / "alone")
    b, meta = ck.load(tmp_path / "live")
    assert meta["step"] == 200 and not (tmp_path / "live" / LOCK_FILE).exists()
    assert all(x.equal(y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_file_lock_holds_one_output_file_and_leaves_its_folder_to_others(tmp_path):
    out = tmp_path / "bridge.pt"
    with RunLock.for_file(out, "test") as lock:
        assert lock.path == tmp_path / f".bridge.pt{LOCK_FILE}" and lock.path.exists()
        with RunLock(tmp_path, "test"), RunLock.for_file(tmp_path / "other.pt", "test"):
            pass  # the folder and its other files are not held
    assert not any(tmp_path.iterdir())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".bridge.pt{LOCK_FILE}").write_text(json.dumps(
            {"pid": sleeper.pid, "host": socket.gethostname(), "started": time.time(), "command": "lmlab compose"}))
        with pytest.raises(LmlabError, match=rf"{out} is in use by lmlab compose \(pid {sleeper.pid}"):
            RunLock.for_file(out, "test").__enter__()
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(LmlabError, match="is a folder"):
        RunLock.for_file(tmp_path, "test")
