"""Adversarial programs in the sandbox: each is contained and scored as a failure, and nothing outlives it.

Floods are bounded (a few dozen sleeping children), never an unbounded fork bomb.
"""

import os
import signal

import pytest

from kvmesh.evals.sandbox import TAIL_BYTES, Limits, run_processes, run_program

FAST = Limits(timeout_s=5, cpu_s=5, memory_mb=512, max_processes=16, max_file_mb=1)
as_root = pytest.mark.skipif(os.getuid() != 0, reason="privilege drop to nobody needs root; CI runs as root")


def test_a_correct_program_passes_and_a_wrong_one_fails():
    ok = run_program("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('fine')", FAST)
    assert ok.passed and ok.returncode == 0 and "fine" in ok.stdout
    wrong = run_program("def add(a, b):\n    return a - b\nassert add(2, 3) == 5", FAST)
    assert wrong.status == "failed" and "AssertionError" in wrong.stderr
    broken = run_program("def add(a, b) return a", FAST)
    assert broken.status == "failed" and "SyntaxError" in broken.stderr


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit"])
def test_exiting_early_with_status_zero_is_a_failure(exit_call):
    result = run_program(f"{exit_call}\nassert False, 'the test never ran'", FAST)
    assert result.status == "failed"


def test_infinite_loop_is_stopped_by_the_wall_clock():
    result = run_program("while True:\n    pass", Limits(timeout_s=1.5, cpu_s=30))
    assert result.status == "timeout" and result.limit == "wall-clock"
    assert run_processes(result.run_id) == []


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock_does():
    result = run_program("while True:\n    pass", Limits(timeout_s=30, cpu_s=1))
    assert result.status == "timeout" and result.limit == "cpu"


def test_cpu_limit_holds_when_the_program_ignores_sigxcpu():
    source = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"
    result = run_program(source, Limits(timeout_s=30, cpu_s=1))
    assert result.status == "timeout" and result.limit == "cpu" and result.returncode == -signal.SIGKILL


def test_memory_hog_fails():
    result = run_program("block = bytearray(4 * 1024 ** 3)\nprint(len(block))", FAST)
    assert result.status == "failed" and "MemoryError" in result.stderr


def test_huge_output_is_cut_off():
    result = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", FAST)
    assert result.status == "failed"
    assert len(result.stdout) <= TAIL_BYTES


def test_background_children_do_not_survive():
    program = (
        "import subprocess\n"
        "children = [subprocess.Popen(['sleep', '60']) for _ in range(12)]\n"
        "print('spawned', len(children))\n"
    )
    result = run_program(program, Limits(timeout_s=10, max_processes=64))
    assert result.passed and "spawned 12" in result.stdout
    assert run_processes(result.run_id) == []


def test_children_that_leave_the_process_group_are_killed_too():
    program = (
        "import os, time\n"
        "for _ in range(5):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "print('forked')\n"
    )
    result = run_program(program, Limits(timeout_s=10, max_processes=64))
    assert "forked" in result.stdout
    assert run_processes(result.run_id) == []


@as_root
def test_bounded_fork_flood_hits_the_process_limit():
    program = (
        "import os, time\n"
        "made = 0\n"
        "for _ in range(40):\n"  # bounded: at most 40 sleeping children
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    made += 1\n"
        "print('made', made)\n"
    )
    result = run_program(program, Limits(timeout_s=10, max_processes=8))
    assert result.status == "failed" and "BlockingIOError" in result.stderr  # fork refused: EAGAIN
    assert run_processes(result.run_id) == []


@as_root
def test_writing_outside_the_working_directory_is_refused(tmp_path):
    target = tmp_path / "stolen.txt"  # a root-owned directory, like the project checkout
    os.chmod(tmp_path, 0o755)
    result = run_program(f"open({str(target)!r}, 'w').write('pwned')", FAST)
    assert result.status == "failed" and "PermissionError" in result.stderr
    assert not target.exists()
    inside = run_program("open('notes.txt', 'w').write('ok')\nprint(open('notes.txt').read())", FAST)
    assert inside.passed and "ok" in inside.stdout


@as_root
def test_killing_the_parent_is_refused():
    result = run_program("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", FAST)
    assert result.status == "failed" and "PermissionError" in result.stderr


SECRET_PROGRAM = (
    "import os\n"
    "print(sorted(os.environ))\n"
    "try:\n"
    "    print(open(f'/proc/{os.getppid()}/environ', 'rb').read())\n"
    "except OSError as error:\n"
    "    print('refused', error)\n"
)
SECRET_RUNNER = (
    "import sys\n"
    "from kvmesh.evals.sandbox import Limits, run_program\n"
    "print(run_program(sys.argv[1], Limits(timeout_s=5)).stdout)\n"
)


@as_root
def test_environment_secrets_are_not_visible():
    import subprocess
    import sys

    # The secret sits in the runner's startup environment, which is what /proc/<pid>/environ shows.
    env = {**os.environ, "KVMESH_TEST_SECRET": "hunter2"}
    out = subprocess.run(
        [sys.executable, "-c", SECRET_RUNNER, SECRET_PROGRAM], env=env, capture_output=True, text=True, check=True
    )
    assert "PATH" in out.stdout and "refused" in out.stdout
    assert "hunter2" not in out.stdout and "KVMESH_TEST_SECRET" not in out.stdout


@as_root
def test_files_left_in_shared_temp_folders_are_removed():
    name = f"kvmesh-leftover-{os.getpid()}"
    result = run_program(f"open('/tmp/{name}', 'w').write('x')\nopen('/dev/shm/{name}', 'w').write('x')", FAST)
    assert result.passed
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/dev/shm/{name}")
