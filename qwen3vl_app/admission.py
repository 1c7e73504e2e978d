"""Server-wide admission: at most `--max_concurrent` generation requests at once, across
every gunicorn worker.

The gunicorn master creates a small file of `max_concurrent` int32 tickets before it forks
(`gunicorn_config.on_starting`) and names it in the environment; each worker maps it.  A
ticket holds the pid of the worker whose request owns it, 0 when free.  Taking a ticket scans
for a 0 under an `flock` (a few microseconds; the kernel drops the lock if a process
dies); giving it back is a single aligned store.  When a worker dies without giving its
tickets back (SIGKILL, crash), the master frees them in `child_exit`.

Requests beyond the limit are refused at once (503 + Retry-After, by `api/admission.py`,
the HTTP side: the view decorator and the body read); nothing here ever waits.  Without
the master's file (the app built outside our gunicorn config), each process counts alone
against the same limit and says so in the log.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import shutil
import struct
import tempfile

log = logging.getLogger("qwen3vl.admission")

ENV_FILE = "_QWEN3VL_ADMISSION_FILE"  # set by the master, read by workers (not a user setting)
_SLOT = struct.Struct("=i")


class Admission:
    """Slots in a shared file (or, without one, in this process)."""

    def __init__(self, limit: int, path: str | None = None):
        self.limit = max(0, int(limit))
        self.path = path
        self._owner: int | None = None  # pid that opened the mapping (re-opened after a fork)
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._local = 0  # fallback counter when there is no shared file

    @classmethod
    def from_env(cls, limit: int, environ=None) -> Admission:
        environ = os.environ if environ is None else environ
        path = environ.get(ENV_FILE) or None
        if path is not None and not os.path.exists(path):
            path = None
        if path is None:
            log.warning(
                "no shared admission file from the gunicorn master: --max_concurrent=%d is enforced per process", limit
            )
        return cls(limit, path)

    # -- shared file ---------------------------------------------------------------
    @staticmethod
    def create_file(directory: str, limit: int) -> str:
        path = os.path.join(directory, "admission")
        with open(path, "wb") as f:
            f.write(b"\0" * (_SLOT.size * max(1, int(limit))))
        return path

    def _mapping(self) -> mmap.mmap:
        pid = os.getpid()
        if self._map is None or self._owner != pid:  # each process opens its own descriptor: flock is per open file
            assert self.path is not None  # callers use the local counter without a shared file
            self._fd = os.open(self.path, os.O_RDWR)
            self._map = mmap.mmap(self._fd, _SLOT.size * max(1, self.limit))
            self._owner = pid
        return self._map

    # -- requests ------------------------------------------------------------------
    def try_acquire(self) -> Ticket | None:
        if self.limit <= 0:
            return None
        if self.path is None:
            if self._local >= self.limit:
                return None
            self._local += 1
            return Ticket(self, -1)
        m = self._mapping()
        pid = os.getpid()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for i in range(self.limit):
                if _SLOT.unpack_from(m, i * _SLOT.size)[0] == 0:
                    _SLOT.pack_into(m, i * _SLOT.size, pid)
                    return Ticket(self, i)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return None

    def _release(self, index: int) -> None:
        if index < 0:
            self._local -= 1
            return
        m = self._mapping()
        if _SLOT.unpack_from(m, index * _SLOT.size)[0] == os.getpid():
            _SLOT.pack_into(m, index * _SLOT.size, 0)

    def in_use(self) -> int:
        """Slots taken across the server (this process only without a shared file)."""
        if self.path is None:
            return self._local
        m = self._mapping()
        return sum(1 for i in range(self.limit) if _SLOT.unpack_from(m, i * _SLOT.size)[0])


class Ticket:
    __slots__ = ("_admission", "_index", "_held")

    def __init__(self, admission: Admission, index: int):
        self._admission, self._index, self._held = admission, index, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._release(self._index)


def free_tickets_of(path: str, pid: int) -> int:
    """Master side: give back every ticket a dead worker still held.  Returns how many."""
    freed = 0
    try:
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            for off in range(0, len(data) - _SLOT.size + 1, _SLOT.size):
                if _SLOT.unpack_from(data, off)[0] == pid:
                    f.seek(off)
                    f.write(_SLOT.pack(0))
                    freed += 1
    except OSError:
        pass
    return freed


# -- master side: the runtime folder (admission file + Prometheus multiprocess files) ------

RUNTIME_PREFIX = "qwen3vl-"


def make_runtime_dir(base: str = "") -> str:
    """A fresh folder for this server's shared files, in /dev/shm when there is one."""
    if not base:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    _remove_stale(base)
    return tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-", dir=base)


def _remove_stale(base: str) -> None:
    """Folders left by masters that were killed outright (their pid is gone)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if not name.startswith(RUNTIME_PREFIX) or len(parts) < 3 or not parts[1].isdigit():
            continue
        path = os.path.join(base, name)
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue
