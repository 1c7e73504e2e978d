"""The shared admission tickets without a server: across forked processes, freed for a dead
process, and the per-process fallback."""

import os

from qwen3vl_app.admission import ENV_FILE, Admission, free_tickets_of, make_runtime_dir


def test_tickets_are_shared_across_fork_and_freed_for_the_dead(tmp_path):
    path = Admission.create_file(str(tmp_path), 3)
    adm = Admission.from_env(3, {ENV_FILE: path})
    a, b = adm.try_acquire(), adm.try_acquire()
    assert a and b and adm.in_use() == 2

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a "worker": sees the parent's two tickets, takes the last one, dies holding it
        child = Admission.from_env(3, {ENV_FILE: path})
        got = child.try_acquire() is not None and child.try_acquire() is None
        os.write(w, b"1" if got else b"0")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    assert adm.try_acquire() is None and adm.in_use() == 3
    assert free_tickets_of(path, pid) == 1  # what the master does in child_exit
    c = adm.try_acquire()
    assert c is not None
    for t in (a, b, c):
        t.release()
        t.release()  # idempotent
    assert adm.in_use() == 0


def test_fallback_without_the_masters_file_counts_per_process():
    adm = Admission.from_env(2, {})
    t1, t2 = adm.try_acquire(), adm.try_acquire()
    assert t1 and t2 and adm.try_acquire() is None
    t1.release()
    assert adm.try_acquire() is not None


def test_runtime_dir_removes_folders_of_dead_masters(tmp_path):
    stale = tmp_path / "qwen3vl-999999999-abc"  # no such pid
    stale.mkdir()
    live = tmp_path / f"qwen3vl-{os.getpid()}-xyz"
    live.mkdir()
    fresh = make_runtime_dir(str(tmp_path))
    assert not stale.exists() and live.exists() and os.path.isdir(fresh)
