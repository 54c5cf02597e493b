"""benchmarks/gpu_check.py on a machine without a GPU: it needs nothing the GPU image lacks (no pytest-benchmark),
and its budget holds whatever happens (each phase its own share, a phase killed with its processes at the end of
its share). Its GPU half is the script itself, run on a GPU machine."""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from benchmarks import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("elapsed, run_tests, expected", [
    (0.0, True, {"timings": 170.0, "tests": 150.0}),  # 330 - 10 for the report, 150 of it for the tests
    (3.0, True, {"timings": 167.0, "tests": 150.0}),  # start-up time comes out of the timings
    (200.0, True, {"timings": 0.0, "tests": 120.0}),  # late: the tests get what is left, never more
    (0.0, False, {"timings": 320.0, "tests": 0.0}),   # --skip-tests: the timings get it all
    (400.0, True, {"timings": 0.0, "tests": 0.0}),    # over budget: nothing more starts
])
def test_phase_budgets_never_exceed_the_budget(elapsed, run_tests, expected):
    got = gpu_check.phase_budgets(330.0, 150.0, elapsed, run_tests)
    assert got == expected
    assert elapsed + got["timings"] + got["tests"] + gpu_check.MARGIN_S <= max(330.0, elapsed + gpu_check.MARGIN_S)


def test_a_phase_is_killed_with_its_children_at_the_end_of_its_share(tmp_path):
    """A phase stuck (here: sleeping, with a child process sleeping too) is killed at its timeout, children
    included: status 124, and the script goes on within its budget."""
    marker = tmp_path / "child.pid"
    code = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
            f"open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.time()
    status, seconds = gpu_check.run_bounded([sys.executable, "-c", code], 3.0)
    assert status == 124 and time.time() - t0 < 30  # 3 s share; the margin is for a loaded machine
    child = int(marker.read_text())
    for _ in range(50):  # the kill is delivered at once; reaping by init may take a moment
        if not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the phase's child {child} outlived the kill")


def test_a_phase_that_finishes_reports_its_status():
    status, seconds = gpu_check.run_bounded([sys.executable, "-c", "raise SystemExit(3)"], 60.0)
    assert status == 3 and seconds < 60


def test_measurement_loops_stop_at_the_deadline(monkeypatch):
    calls = []
    monkeypatch.setattr(gpu_check, "DEADLINE", time.time() - 1.0)  # already past: one sample, then stop
    gpu_check._time_wall(lambda: calls.append(1), reps=1000)
    assert len(calls) == 2  # the warm-up call and one timed call


def test_the_tests_phase_runs_without_pytest_benchmark(tmp_path):
    """The repository's addopts pass --benchmark-disable, which pytest refuses without pytest-benchmark (as on
    the GPU image): the command gpu_check.py runs must not depend on them. Simulated here with the plugin
    disabled (-p no:benchmark) and an ini file carrying the same addopts."""
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -ra --benchmark-disable\nmarkers =\n    gpu: a GPU test\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_one.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.gpu
        def test_marked():
            assert True

        def test_not_marked():
            raise AssertionError("only the gpu-marked tests run")
    """))
    cmd = gpu_check.tests_command()
    assert cmd[-1] == "tests"
    proc = subprocess.run([*cmd[:-1], "-p", "no:benchmark", cmd[-1]], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 deselected" in proc.stdout


def test_the_script_imports_neither_pytest_nor_pytest_benchmark():
    # as `python3 benchmarks/gpu_check.py` runs it: its folder first on sys.path
    code = ("import runpy, sys; sys.argv = ['gpu_check.py', '--dry-run']; sys.path.insert(0, 'benchmarks')\n"
            "try:\n    runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')\n"
            "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest', 'pytest_benchmark')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
