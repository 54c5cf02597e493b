"""Every Triton kernel and configuration compiles for sm_90 and sm_80 without a GPU (triton.compile with
GPUTarget), with registers and spills recorded and no spills in the hot configurations, and the PTX analysis
(barriers, hot-loop barriers, bytes per thread per load) plausible.

The compile runs in a subprocess WITHOUT TRITON_INTERPRET: conftest.py sets it for this process, and the
interpreter replaces @triton.jit functions, so nothing could be compiled here. The table is printed (pytest -s)
and kept as JSON next to the test's tmp_path."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def _compile_tables(tmp_path, archs, *extra):
    """One subprocess per architecture, run concurrently (compiling is CPU-bound and single-threaded)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = []
    for arch in archs:
        out = tmp_path / f"compile_sm{arch}.json"
        cmd = [sys.executable, "-m", "tsdi_kernels.kernels.compile_check", "--json", str(out), "--arch", str(arch),
               *extra]
        procs.append((out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                            env=env)))
    rows, logs, codes = [], [], []
    for out, proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        print(stdout)
        logs.append(stdout[-3000:] + stderr[-3000:])
        codes.append(proc.returncode)
        rows += json.loads(out.read_text()) if out.exists() else []
    return codes, rows, "\n".join(logs)


@pytest.mark.slow  # compiles every kernel for two targets in subprocesses (about a minute)
def test_every_kernel_compiles_for_sm90_and_sm80_without_spills(tmp_path):
    # --quick: covering sets of the dtype / flag combinations (every kernel, every value of every flag)
    codes, rows, log = _compile_tables(tmp_path, (90, 80), "--quick")
    assert rows, log
    failed = [(r["kernel"], r["config"], r["arch"], r["error"]) for r in rows if not r["ok"]]
    assert not failed, failed
    kernels = {r["kernel"] for r in rows}
    assert {"sample._stream_kernel", "sample._finish_kernel", "sample._fallback_kernel",
            "accumulate._row_stats_kernel", "accumulate._merge_kernel", "accumulate._count_kernel"} <= kernels
    assert {r["arch"] for r in rows} == {"sm_90", "sm_80"}
    assert all(r["registers"] and r["registers"] <= 255 for r in rows)
    spills = [(r["kernel"], r["config"], r["arch"], r["spill_stores"], r["spill_loads"]) for r in rows
              if r["hot"] and (r["spill_stores"] or r["spill_loads"])]
    assert not spills, spills
    assert codes == [0, 0], log
    _assert_ptx_stats_plausible(rows)


def _assert_ptx_stats_plausible(rows):
    """ptx_stats.py on the same compiles: static barrier counts, and the streamed input's loads as wide
    as the tile gives each thread (BLOCK * element bytes / threads, vectors of at most 16 bytes)."""
    from tsdi_kernels.kernels.sampling import triton_impl as sample

    cfg = sample.plan(64, 128256, "cuda")
    elem = {"bf16": 2, "fp16": 2, "fp32": 4}
    for r in rows:
        assert {"barriers", "loop_barriers", "loop_barriers_min", "loop_barriers_max", "load_bytes",
                "loop_loads"} <= set(r), r
        assert r["load_bytes"] in {1, 2, 4, 8, 16}, r
        if r["loop_barriers"] is not None:
            assert r["loop_barriers"] <= r["barriers"], r
        if r["loop_barriers_min"] is not None:
            assert r["loop_barriers_min"] <= r["loop_barriers_max"] <= r["loop_barriers"], r
    for kernel, block in (("sample._stream_kernel", cfg["block"]), ("sample._fallback_kernel", cfg["block_fallback"])):
        mine = [r for r in rows if r["kernel"] == kernel]
        assert mine
        for r in mine:
            # the tile max of every tile is a block reduction: at least one barrier per iteration
            assert r["loop_barriers"] >= 1 and r["loop_barriers_min"] >= 1, r
            per_thread = min(16, block * elem[r["config"].split("-")[0]] // (r["num_warps"] * 32))
            assert r["loop_loads"]["logits_ptr"] == [per_thread] and r["load_bytes"] == per_thread, r


def test_gpu_check_dry_run_lists_the_planned_cases():
    """benchmarks/gpu_check.py imports and parses its arguments without a GPU."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "gpu_check.py"), "--dry-run"],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("24 cases")
    assert sum("debias_sample" in line for line in lines) == 12
    assert any("logit_mean_update" in line and "B=256" in line and "V=151936" in line for line in lines)
