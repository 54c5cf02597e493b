"""Start-up time of the `tsdi` command (issue 12: `tsdi --help` and argument errors well under a second).

Each entry runs the real console script as a subprocess and times its wall clock (start, import, parse, exit),
median of several runs, against `python -c pass` (the interpreter's own start-up) measured in the same run:

    python -c pass                      the baseline
    tsdi --help                         the top-level help
    tsdi generate --help                a subcommand's help (the demo's options are built too)
    tsdi generate --strength nan ...    an argument error (one `tsdi: error:` line, exit 2)
    tsdi --help, eager                  the same parse with the ops registered at import (torch), as every
                                        start-up was before issue 12 (and as `python -m tsdi_kernels.cli` still is)
    python -c "import torch"            for scale: what every command paid before (torch at start-up)

conftest.py prints the "cost relative to the baseline operation" table (median and multiple of `python -c pass`);
the load average is in its header, since a busy machine slows every start-up alike.

    python -m pytest benchmarks/bench_cli.py --benchmark-enable -q -p no:cacheprovider
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROUNDS = 7


def _tsdi() -> list:
    """The console script of this environment (what a user runs), else the module under the script's name."""
    script = Path(sys.executable).with_name("tsdi")
    if script.exists():
        return [str(script)]
    found = shutil.which("tsdi")
    if found:
        return [found]
    pytest.skip("the `tsdi` console script is not installed (pip install -e .)")


# name -> (label, argv builder, expected exit status)
ENTRIES = {
    "python_pass": ("python -c pass", lambda: [sys.executable, "-c", "pass"], 0),
    "help": ("tsdi --help", lambda: _tsdi() + ["--help"], 0),
    "generate_help": ("tsdi generate --help", lambda: _tsdi() + ["generate", "--help"], 0),
    "argument_error": ("tsdi generate --strength nan (error)",
                       lambda: _tsdi() + ["generate", "--model", "m", "--prompt", "x", "--strength", "nan"], 2),
    # what `tsdi --help` cost before issue 12: the package registered the ops (torch) on every start-up; outside
    # the console script it still does, so this is the same parse with the eager import
    "eager_help": ("tsdi --help, ops registered eagerly (before)",
                   lambda: [sys.executable, "-c", "import sys; from tsdi_kernels.cli import main; sys.exit(main())",
                            "--help"], 0),
    "import_torch": ("python -c 'import torch' (for scale)", lambda: [sys.executable, "-c", "import torch"], 0),
}


@pytest.mark.parametrize("name", list(ENTRIES))
def test_cli_startup(benchmark, name):
    label, argv, expected = ENTRIES[name]
    cmd = argv()
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run():
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=120)
        assert proc.returncode == expected, proc.stderr.decode(errors="replace")[-500:]

    run()  # warm the file cache: the first start-up of a session reads every module from disk
    benchmark.group = "tsdi start-up (subprocess wall time)"
    benchmark.extra_info.update(role="baseline" if name == "python_pass" else "candidate", label=label,
                                report="cost", threads="1 (OMP_NUM_THREADS=1 in each subprocess)")
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
