"""Running generated code: one fresh process per program, with limits, killed as a group when done.

THIS IS NOT A SECURITY BOUNDARY. It contains the accidents and the usual misbehaviour of generated code
(infinite loops, memory hogs, fork floods, huge output, `sys.exit` to fake a pass, stray writes, reading the
runner's secrets); it does not stop code written to attack this harness (the completion marker can be forged
by code that knows how it is sent), and the network is NOT cut off. Run untrusted code in a VM or container
you can throw away.

What each run gets:
- a new temporary working directory (also HOME and TMPDIR), and a scrubbed environment (no inherited vars);
- resource limits, set by a small launcher that then `exec`s Python (no `preexec_fn` in our threaded
  process): address space, CPU seconds, file size (bounds output too), process count, no core dumps;
- when we run as root, the program runs under a fresh unprivileged uid of its own (no account needed): root
  ignores the process-count limit, a fresh uid shares that limit with no other run (killed processes count
  until they are reaped), cannot write the runner's files or signal it, and lets cleanup kill everything
  the uid owns. The program then needs an interpreter any user can reach (a virtualenv under /root is not):
  ours if it is, else the system `python3`. Generated code uses the standard library only;
- stdout and stderr go to files in a directory the program cannot write; we keep their tails;
- a pass needs exit status 0 AND a marker that the runner script writes to a private pipe after the program
  (and its test) returned, so `sys.exit(0)` or `os._exit(0)` mid-test is a failure;
- on exit or timeout the whole process group is killed, and so is any escaped process (one that left the
  group with `setsid`): every process of the run's uid, and any process carrying this run's marker variable;
  as root, whatever the run's uid left in the world-writable /tmp, /var/tmp and /dev/shm is removed.

Not as root, the program runs as the caller: it can read files the caller can, including the caller's
startup environment under /proc. Only root runs get the separate uid that keeps those private.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

TAIL_BYTES = 4000
# Said wherever a flag lets generated code run.
NOT_A_BOUNDARY = "the sandbox limits time, memory, processes and output but is not a security boundary"

# Applies the limits, drops privileges if root, then becomes the Python that runs the program.
_LAUNCHER = """
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
for name, value in cfg["limits"].items():
    hard = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU at the soft limit, SIGKILL a second later
    resource.setrlimit(getattr(resource, name), (value, hard))
if os.getuid() == 0:
    os.setgroups([])
    os.setgid(cfg["gid"])
    os.setuid(cfg["uid"])
os.chdir(cfg["cwd"])
os.execve(cfg["python"], [cfg["python"], "-I", "-B", "runner.py", str(cfg["fd"])], cfg["env"])
"""

# Runs program.py in a fresh namespace; reports completion on the inherited pipe only if it returned normally.
_RUNNER = """
import os, sys
_fd = int(sys.argv[1])
with open("program.py") as _file:
    _code = compile(_file.read(), "program.py", "exec")
exec(_code, {"__name__": "__main__"})
os.write(_fd, b"completed")
"""


@dataclass(frozen=True)
class Limits:
    """Limits for one program.

    Args:
        timeout_s: wall-clock seconds before the process group is killed.
        cpu_s: CPU seconds (RLIMIT_CPU).
        memory_mb: address space in MiB (RLIMIT_AS).
        max_processes: processes the program's user may have (RLIMIT_NPROC; enforced when we are root).
        max_file_mb: largest file the program may write, its stdout and stderr included (RLIMIT_FSIZE).
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    max_processes: int = 32
    max_file_mb: int = 16


@dataclass
class ExecResult:
    status: str  # "passed", "failed" or "timeout" (out of wall-clock or CPU time)
    returncode: int | None
    stdout: str  # the last TAIL_BYTES of each stream
    stderr: str
    seconds: float
    run_id: str  # the marker variable's value, KVMESH_SANDBOX=<run_id> in the program's environment
    limit: str | None = None  # for a timeout, which limit ended it: "wall-clock" or "cpu"

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - TAIL_BYTES))
        return handle.read().decode("utf-8", errors="replace")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _alive(entry: Path) -> bool:
    """False for zombies: dead processes waiting to be reaped hold nothing but a pid."""
    stat = (entry / "stat").read_text()
    return stat[stat.rindex(")") + 2] not in "ZX"


def run_processes(run_id: str, uid: int | None = None) -> list[int]:
    """Live PIDs of a run: those carrying its marker variable, and (if given) every process of its uid."""
    needle = f"KVMESH_SANDBOX={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ours = (uid is not None and entry.stat().st_uid == uid) or needle in (entry / "environ").read_bytes()
            if ours and _alive(entry):
                found.append(int(entry.name))
        except OSError:  # gone already, or not ours to read
            continue
    return found


def _kill_run(run_id: str, uid: int | None, patience_s: float = 5.0) -> None:
    """SIGKILL every live process of the run until none is left (killing is asynchronous)."""
    deadline = time.monotonic() + patience_s
    while (pids := run_processes(run_id, uid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _read_marker(fd: int) -> bool:
    """Non-blocking: a process that escaped every kill may still hold the write end open."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 64) == b"completed"
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _uids_in_use() -> set[int]:
    uids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uids.add(entry.stat().st_uid)
            except OSError:
                continue
    return uids


def _fresh_uid() -> int:
    """An unprivileged uid that no process uses now (far above ordinary and system accounts)."""
    taken = _uids_in_use()
    while True:
        uid = random.randrange(200_000, 2_000_000_000)
        if uid not in taken:
            return uid


def _remove_leftovers(uid: int) -> None:
    """Delete top-level entries of the world-writable temp folders owned by the run's uid."""
    for folder in (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.lstat().st_uid != uid:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
            except OSError:
                continue


def _out_of_cpu(returncode: int | None) -> bool:
    """The CPU limit ended the run: SIGXCPU at the soft limit, or SIGKILL at the hard one if that was caught.

    We only kill the group after the program has exited or timed out, so a SIGKILL seen here was not ours.
    """
    return returncode in (-signal.SIGXCPU, -signal.SIGKILL)


def _reachable_by_anyone(path: Path) -> bool:
    real = path.resolve()
    if not real.is_file() or not real.stat().st_mode & 0o001:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in real.parents)


def sandbox_python(drop_privileges: bool) -> str:
    """The interpreter that runs generated code; when dropping privileges, one that any user can execute."""
    if not drop_privileges:
        return sys.executable
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    for candidate in (sys.executable, getattr(sys, "_base_executable", None), system):
        if candidate and _reachable_by_anyone(Path(candidate)):
            return candidate
    raise RuntimeError(
        "generated code runs under an unprivileged uid when kvmesh runs as root, but no Python interpreter is "
        "reachable by other users (this one lives in a private directory). Install a system python3 "
        "(apt-get install python3) or run kvmesh as an ordinary user."
    )


def run_program(source: str, limits: Limits | None = None) -> ExecResult:
    """Run `source` as a Python program in a fresh sandboxed process; passed = it ran to its end."""
    limits = limits or Limits()
    run_id = uuid.uuid4().hex
    as_root = os.getuid() == 0
    uid = gid = _fresh_uid() if as_root else os.getuid()
    with tempfile.TemporaryDirectory(prefix="kvmesh-run-") as work, tempfile.TemporaryDirectory() as io_dir:
        work_dir, io = Path(work), Path(io_dir)
        (work_dir / "program.py").write_text(source)
        (work_dir / "runner.py").write_text(_RUNNER)
        if as_root:
            os.chown(work_dir, uid, gid)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": work,
            "TMPDIR": work,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "KVMESH_SANDBOX": run_id,
        }
        mib = 1024 * 1024
        read_end, write_end = os.pipe()
        config = {
            "limits": {
                "RLIMIT_AS": limits.memory_mb * mib,
                "RLIMIT_CPU": limits.cpu_s,
                "RLIMIT_FSIZE": limits.max_file_mb * mib,
                "RLIMIT_NPROC": limits.max_processes,
                "RLIMIT_CORE": 0,
            },
            "uid": uid,
            "gid": gid,
            "cwd": work,
            "python": sandbox_python(as_root),
            "env": env,
            "fd": write_end,
        }
        started = time.perf_counter()
        with open(io / "stdout", "wb") as out, open(io / "stderr", "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(write_end,),
                start_new_session=True,
                env=env,
            )
        os.close(write_end)
        timed_out = False
        try:
            process.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(process.pid)  # always: background children must not outlive the run
        process.wait()
        _kill_run(run_id, uid if as_root else None)
        if as_root:
            _remove_leftovers(uid)
        seconds = time.perf_counter() - started
        completed = _read_marker(read_end)
        limit = "wall-clock" if timed_out else "cpu" if _out_of_cpu(process.returncode) else None
        passed = process.returncode == 0 and completed
        status = "timeout" if limit else "passed" if passed else "failed"
        stdout, stderr = _tail(io / "stdout"), _tail(io / "stderr")
        return ExecResult(status, process.returncode, stdout, stderr, seconds, run_id, limit)


def run_many(sources: list[str], limits: Limits | None = None, workers: int = 2) -> list[ExecResult]:
    """Run programs concurrently (`workers` at a time, each in its own sandbox); results in input order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda source: run_program(source, limits), sources))
