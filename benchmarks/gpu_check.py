"""The one script to run on a GPU machine: timings of the Triton kernels against baselines, then the GPU tests.

    PYTHONPATH=. TSDI_DISABLE_EXTENSION=1 python3 benchmarks/gpu_check.py [--quick] [--profile] [--out FILE]
        [--skip-tests] [--budget-s 330] [--tests-s 150] [--dry-run] [--cpu-smoke]

1. measures this GPU's copy bandwidth (device-to-device copy of 1 GiB: 2 bytes moved per byte copied) and the
   time of one launch (a 1-element kernel, timed like the ops: CUDA-graph replays);
2. debias_sample, V = 128256 bf16, B in {1, 8, 64, 256}, configurations "k50 p0.9" (T 0.7, top-k 50, top-p 0.9)
   and "p0.9" (T 0.7, top-p 0.9 alone), then "k50 p0.9" at V = 151936: per case the time (median over CUDA-graph
   replays of 10 calls, and of eager calls between CUDA events, which includes host overhead when the GPU waits
   for the host), the one-read floor (bytes / copy bandwidth + one launch) and the ratio to it, GB/s and the
   fraction of the copy bandwidth, and the ratio of each baseline's time to ours, measured in the same run:
     hf            the Hugging Face pipeline (benchmarks/baselines.py: bias subtraction, TemperatureLogitsWarper,
                   TopKLogitsWarper, TopPLogitsWarper, softmax, multinomial)
     compiled_ref  torch.compile(reference.debias_sample, dynamic=True)
     flashinfer    top_k_top_p_sampling_from_logits after a bias subtraction and /T, when flashinfer imports
   Each baseline is timed over CUDA-graph replays when it can be captured, else with CUDA events around eager
   calls; the table shows which ([G] / [E]): a graph time is device time only, an event time may include host
   work, so compare like with like;
3. logit_mean_update (L = 4 answer positions, bf16) over B x V against the eager and the compiled reference;
4. runs the GPU tests (`pytest -m gpu tests`, the tests marked `gpu` wherever they live, without the repository's
   pytest `addopts`, which name pytest-benchmark: the GPU image has no pytest-benchmark), and records the result.
--profile splits each debias_sample call (ours and each baseline) into its kernels with torch.profiler: kernel
names and device microseconds per call. The cases run in order of importance (the issue's bar shapes first).

The whole script stays under 6 minutes including Triton JIT and torch.compile whatever happens (--budget-s, default
330 s from start): each phase runs in a subprocess with its own share of the budget (phase_budgets: the timings get
what the tests (--tests-s) and the final report (MARGIN_S) leave), and is killed, with its process group, when its
share is spent. Inside the timings, no case starts after their deadline and the measurement loops stop at it. A
killed phase keeps what it had: the timings write JSON after every case (--out, default $OUT/gpu_check.json when OUT
is set, else ./gpu_check.json), pytest's output goes to a file read back. Prints a table at the end.
--cpu-smoke runs the same code on CPU tensors at small shapes (wall-clock timings, no tests): a check of this
script itself on a machine without a GPU. Needs no compiled extension (TSDI_DISABLE_EXTENSION=1).

Bytes moved (the floor each op is compared with):
    debias_sample      B * V * 2 (bf16 logits, read once) + D * V * 4 (fp32 bias rows, D = number of DISTINCT
                       rows among positions: the inputs draw positions from L = 16 rows, so D = min(B, 16) or
                       fewer; rows shared by several batch rows are read once from HBM) + 8 * B (tokens)
    logit_mean_update  2 * B * L * V * 2 (aligned + reference, once) + 16 * L * V (mean, m2 read and written);
                       a kernel that reads its inputs twice (logsumexp first) is capped at half of that floor's
                       speed unless L2 holds them
"""
from __future__ import annotations

import time

_T0 = time.time()  # the budget counts from here: imports and JIT included

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

if __package__:  # python3 -m benchmarks.gpu_check
    from .baselines import SAMPLING, hf_sampler
else:  # python3 benchmarks/gpu_check.py: this folder is sys.path[0]
    from baselines import SAMPLING, hf_sampler

BATCHES = (1, 8, 64, 256)
PRIORITY_BATCHES = (64, 256, 1, 8)  # the bars first, so a budget cut loses the least
VOCAB = 128256
EXTRA_VOCAB = 151936  # Qwen2/3
ACC_VOCABS = (128256, 32000, 151936)
BIAS_ROWS = 16
ACC_LENGTH = 4  # answer positions per accumulator update (B x 4 x V per input)
SMOKE_BATCHES, SMOKE_VOCAB = (1, 8), 4096
METHOD_TAG = {"graph": "G", "events": "E", "wall": "W"}
MARGIN_S = 10.0  # kept at the end of the budget for the report (reading JSON, the table)
# When the current phase must stop (epoch seconds): the measurement loops check it (set by the timings phase).
DEADLINE = float("inf")


def planned_cases(quick: bool, smoke: bool = False):
    """Cases in order of importance: debias_sample at V = 128256 in both configurations, then logit_mean_update
    at V = 128256, then the other vocabularies. quick: the first eight and one accumulator case."""
    if smoke:
        cases = [("debias_sample", c, b, SMOKE_VOCAB) for b in SMOKE_BATCHES for c in SAMPLING]
        cases += [("logit_mean_update", f"L{ACC_LENGTH}", b, SMOKE_VOCAB) for b in SMOKE_BATCHES]
    else:
        cases = [("debias_sample", c, b, VOCAB) for b in PRIORITY_BATCHES for c in SAMPLING]
        acc = [("logit_mean_update", f"L{ACC_LENGTH}", b, VOCAB) for b in PRIORITY_BATCHES]
        if quick:
            cases += acc[:1]
        else:
            cases += acc + [("debias_sample", "k50 p0.9", b, EXTRA_VOCAB) for b in PRIORITY_BATCHES]
            cases += [("logit_mean_update", f"L{ACC_LENGTH}", b, v) for v in ACC_VOCABS[1:] for b in PRIORITY_BATCHES]
    return [{"op": op, "config": cfg, "batch": b, "vocab": v} for op, cfg, b, v in cases]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Timings of the tsdi Triton kernels against baselines, and the GPU tests")
    ap.add_argument("--quick", action="store_true", help="only the 8 debias_sample bar cases and one accumulator case")
    ap.add_argument("--profile", action="store_true",
                    help="split each debias_sample call (ours and the baselines) into its kernels (torch.profiler)")
    ap.add_argument("--out", default=os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT")
                    else "gpu_check.json", help="JSON output path (default $OUT/gpu_check.json or ./gpu_check.json)")
    ap.add_argument("--skip-tests", action="store_true", help="timings only")
    ap.add_argument("--dry-run", action="store_true", help="print the planned cases and exit (no GPU needed)")
    ap.add_argument("--reps", type=int, default=50, help="calls timed per measurement")
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="wall seconds for the whole script from its start (JIT and tests included)")
    ap.add_argument("--tests-s", type=float, default=150.0, help="seconds of the budget kept for the GPU tests")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile'd references")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run the script's own code on CPU tensors at small shapes (no GPU needed; no tests)")
    ap.add_argument("--timings-until", type=float, default=None,
                    help=argparse.SUPPRESS)  # internal: run the timings phase alone, until this epoch second
    return ap.parse_args(argv)


# --- the budget -----------------------------------------------------------------------------------------------


def phase_budgets(budget_s, tests_s, elapsed_s, run_tests, margin_s=MARGIN_S):
    """Seconds for the timings phase and for the tests phase out of what is left of the budget after `elapsed_s`,
    MARGIN_S kept for the report: the tests get up to `tests_s`, the timings the rest."""
    left = max(0.0, budget_s - elapsed_s - margin_s)
    tests = min(tests_s, left) if run_tests else 0.0
    return {"timings": left - tests, "tests": tests}


def past_deadline():
    return time.time() > DEADLINE


def run_bounded(cmd, timeout_s, **popen_kwargs):
    """(exit status, seconds) of `cmd` run in its own process group, the whole group killed after `timeout_s`
    (status 124 then): a phase stuck in a JIT compile or a hung kernel cannot hold the script past its share."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)
    try:
        code = proc.wait(timeout=max(0.0, timeout_s))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = 124
    return code, round(time.time() - t0, 1)


# --- timing ---------------------------------------------------------------------------------------------------


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _time_graph(fn, reps):
    """(median us per call over CUDA-graph replays of `inner` calls, None) or (None, why not capturable)."""
    import torch

    inner = 10
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(inner):
                fn()
        graph.replay()
        torch.cuda.synchronize()
    except Exception as exc:  # not capturable (a host sync inside): the caller falls back to events
        torch.cuda.synchronize()
        return None, f"{type(exc).__name__}: {exc}"[:200]
    times = []
    for _ in range(max(5, reps // inner)):
        if times and past_deadline():
            break
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / inner)
    del graph
    return statistics.median(times), None


def _time_events(fn, reps):
    """Median us of eager calls between two CUDA events (host work shows when the GPU waits for it)."""
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if times and past_deadline():
            break
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def _time_wall(fn, reps):
    """CPU tensors (--cpu-smoke): median wall-clock us per call."""
    fn()
    times = []
    for _ in range(reps):
        if times and past_deadline():
            break
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def measure(fn, reps, device="cuda"):
    """(median us, method, why not a graph): graph replays when capturable, else CUDA events around eager calls."""
    if device != "cuda":
        return _time_wall(fn, reps), "wall", None
    us, why = _time_graph(fn, reps)
    if us is not None:
        return us, "graph", None
    return _time_events(fn, reps), "events", why


def measure_eager(fn, reps, device="cuda"):
    return (_time_events(fn, reps), "events") if device == "cuda" else (_time_wall(fn, reps), "wall")


def copy_bandwidth_gbs(device):
    """Bytes moved per second (read + write) by a 1 GiB device-to-device copy (64 MiB on CPU)."""
    import torch

    n = (1 << 30) if device == "cuda" else (64 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    us, _ = measure_eager(lambda: dst.copy_(src), 20, device)
    del src, dst
    return 2 * n / (us * 1e-6) / 1e9


def launch_us(device):
    """One launch of a 1-element kernel, timed as the ops are (graph replays): the '+ one launch' of the floor."""
    import torch

    x = torch.zeros(1, device=device)
    us, _, _ = measure(lambda: x.add_(1), 100, device)
    return us


def kernel_breakdown(fn, device, calls=5):
    """[(kernel name, us per call, launches per call)] of `calls` eager calls under torch.profiler: device kernels
    on CUDA, top-level operators on CPU (--cpu-smoke). Sorted by time, the 8 largest and the rest as 'others'."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        _sync(device)
    totals = {}
    for e in prof.events():
        if device == "cuda":
            if e.device_type != DeviceType.CUDA:
                continue
        elif e.cpu_parent is not None or e.name.startswith("ProfilerStep"):
            continue
        us, n = totals.get(e.name, (0.0, 0))
        totals[e.name] = (us + e.time_range.elapsed_us(), n + 1)
    rows = sorted(((name[:70], us / calls, n / calls) for name, (us, n) in totals.items()), key=lambda r: -r[1])
    if not rows:
        return [("no kernel events recorded (profiler without CUPTI?)", 0.0, 0)]
    if len(rows) > 9:
        rest = rows[8:]
        rows = rows[:8] + [(f"others ({len(rest)} kernels)", sum(r[1] for r in rest), sum(r[2] for r in rest))]
    return rows


# --- cases ----------------------------------------------------------------------------------------------------


def _sampler_inputs(batch, vocab, config, device):
    """Peaked rows like an LLM's: N(0, 2) logits with 40 strong tokens per row; bias rows from L = 16."""
    import torch

    params = SAMPLING[config]
    gen = torch.Generator(device=device).manual_seed(batch * 7 + vocab)
    logits = torch.randn(batch, vocab, device=device, generator=gen) * 2.0
    strong = torch.randint(0, vocab, (batch, 40), device=device, generator=gen)
    logits.scatter_add_(1, strong, torch.rand(batch, 40, device=device, generator=gen) * 12.0)
    return dict(
        logits=logits.to(torch.bfloat16),
        bias=torch.randn(BIAS_ROWS, vocab, device=device, generator=gen) * 0.5,
        positions=torch.randint(0, BIAS_ROWS, (batch,), device=device, generator=gen),
        temperature=torch.full((batch,), params["temperature"], device=device),
        top_k=torch.full((batch,), params["top_k"], dtype=torch.int64, device=device),
        top_p=torch.full((batch,), params["top_p"], device=device),
        seed=torch.arange(batch, device=device) * 7919 + 1)


def sample_baselines(device, compile_ref=True):
    """name -> make(inputs, config) -> zero-argument callable."""
    import torch

    from tsdi_kernels.kernels.sampling import reference

    out = {"hf": lambda a, config: (lambda s=hf_sampler(**SAMPLING[config]): s(a["logits"], a["bias"],
                                                                               a["positions"]))}
    if compile_ref:
        compiled = torch.compile(reference.debias_sample, dynamic=True)
        out["compiled_ref"] = lambda a, config: (lambda: compiled(a["logits"], a["bias"], a["positions"],
                                                                  a["temperature"], a["top_k"], a["top_p"],
                                                                  a["seed"], 1.0))
    if device == "cuda":
        try:
            import flashinfer.sampling as fis

            def fi(a, config):
                t, k = SAMPLING[config]["temperature"], SAMPLING[config]["top_k"]

                def run():
                    scores = (a["logits"].float() - a["bias"][a["positions"]]) / t
                    if k:
                        return fis.top_k_top_p_sampling_from_logits(scores, a["top_k"].int(), a["top_p"])
                    return fis.top_p_sampling_from_probs(torch.softmax(scores, dim=-1), a["top_p"])
                return run
            out["flashinfer"] = fi
        except Exception:
            pass
    return out


def _ours(a):
    import torch

    return lambda: torch.ops.tsdi.debias_sample(a["logits"], a["bias"], a["positions"], a["temperature"],
                                                a["top_k"], a["top_p"], a["seed"], 1.0)


def _launch_plan(batch, vocab, device):
    """The Triton sampler's launch plan for this case (programs of the streaming kernel: batch x splits)."""
    try:
        import torch

        from tsdi_kernels.kernels.sampling import triton_impl
        from tsdi_kernels.kernels.triton_launch import sm_count

        n_sm = sm_count(torch.device(device)) if device == "cuda" else 132
        cfg = triton_impl.plan(batch, vocab, "cuda", n_sm=n_sm)
        cfg = {k: v for k, v in cfg.items() if isinstance(v, (int, float, str))}
        if "splits" in cfg:
            cfg["stream_programs"] = batch * cfg["splits"]
        return dict(cfg, n_sm=n_sm)
    except Exception as exc:  # the plan is informative only
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


def bench_sample(case, reps, baselines, device, profile):
    import torch

    batch, vocab, config = case["batch"], case["vocab"], case["config"]
    a = _sampler_inputs(batch, vocab, config, device)
    distinct = int(a["positions"].unique().numel())
    row = dict(case, dtype="bf16", distinct_bias_rows=distinct,
               bytes=batch * vocab * 2 + distinct * vocab * 4 + 8 * batch, plan=_launch_plan(batch, vocab, device))
    ours = _ours(a)
    tokens = ours()
    bad = int((tokens < 0).sum())  # one sync, outside the timings: a negative token is a row status code
    if bad:
        row["bad_rows"] = bad
    row["us"], row["method"], why = measure(ours, reps, device)
    if why:
        row["not_captured"] = why
    row["eager_us"], _ = measure_eager(ours, reps, device)
    row["baselines"] = {}
    for name, make in baselines.items():
        if past_deadline():
            row["baselines"][name] = {"us": None, "error": "time budget"}
            continue
        try:
            fn = make(a, config)
            us, method, why = measure(fn, reps, device)
            row["baselines"][name] = {"us": us, "method": method, **({"not_captured": why} if why else {})}
        except Exception as exc:
            row["baselines"][name] = {"us": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if profile:
        row["kernels"] = {}
        for name, fn in [("tsdi", ours)] + [(n, baselines[n](a, config)) for n in baselines
                                            if row["baselines"][n].get("us")]:
            try:
                row["kernels"][name] = kernel_breakdown(fn, device)
            except Exception as exc:
                row["kernels"][name] = [(f"profiler failed: {type(exc).__name__}: {exc}"[:200], 0.0, 0)]
    del a
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def bench_accumulate(case, reps, compiled_ref, device):
    import torch

    from tsdi_kernels.kernels.accumulate import reference

    batch, vocab, length = case["batch"], case["vocab"], ACC_LENGTH
    gen = torch.Generator(device=device).manual_seed(batch + vocab)
    aligned = torch.randn(batch, length, vocab, device=device, generator=gen).to(torch.bfloat16)
    ref = torch.randn(batch, length, vocab, device=device, generator=gen).to(torch.bfloat16)
    stats = [torch.zeros(length, vocab, device=device), torch.zeros(length, vocab, device=device),
             torch.zeros(length, dtype=torch.int64, device=device)]
    row = dict(case, length=length, dtype="bf16", bytes=2 * batch * length * vocab * 2 + 16 * length * vocab)
    ours = lambda: torch.ops.tsdi.logit_mean_update(*stats, aligned, ref, None, True)  # noqa: E731
    row["us"], row["method"], why = measure(ours, reps, device)
    if why:
        row["not_captured"] = why
    row["eager_us"], _ = measure_eager(ours, reps, device)
    row["baselines"] = {}
    refs = [("reference", reference.logit_mean_update)] + ([("compiled_ref", compiled_ref)] if compiled_ref else [])
    for name, fn in refs:
        if past_deadline():
            row["baselines"][name] = {"us": None, "error": "time budget"}
            continue
        try:  # both read a flag on the host (a sync): eager calls only
            us, method = measure_eager(lambda: fn(*stats, aligned, ref, None, True), max(5, reps // 5), device)
            row["baselines"][name] = {"us": us, "method": method}
        except Exception as exc:
            row["baselines"][name] = {"us": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
    del aligned, ref, stats
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def tests_command():
    """pytest over the tests marked `gpu`, with none of the repository's `addopts` (they pass pytest-benchmark's
    --benchmark-disable, and the GPU image has no pytest-benchmark) and no cache written into the tree."""
    return [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-ra", "-p", "no:cacheprovider", "-o", "addopts=",
            "tests"]


def run_tests(timeout_s):
    """The GPU tests from the repository root, the source tree first on the path; killed after `timeout_s`."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    cmd = tests_command()
    print(f"running {' '.join(cmd[2:])} (timeout {timeout_s:.0f} s)", flush=True)
    with tempfile.TemporaryFile(mode="w+") as log:  # a file, so that a killed run keeps its output
        code, seconds = run_bounded(cmd, timeout_s, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
        log.seek(0)
        tail = log.read()[-3000:]
    print(tail)
    last = tail.strip().splitlines()[-1] if tail.strip() else ""
    return {"returncode": code, "seconds": seconds,
            "summary": f"killed after {timeout_s:.0f} s (its share of the budget); last line: {last}" if code == 124
            else last}


# --- derived figures and the table ----------------------------------------------------------------------------


def derive(row, copy_gbs, launch):
    """GB/s, fraction of the copy bandwidth, the one-read floor and the ratios, from the measured times."""
    if not row.get("us"):
        return row
    row["gbs"] = row["bytes"] / (row["us"] * 1e-6) / 1e9
    row["frac_copy_bw"] = row["gbs"] / copy_gbs
    row["floor_us"] = row["bytes"] / (copy_gbs * 1e9) * 1e6 + launch
    row["x_floor"] = row["us"] / row["floor_us"]
    for b in row["baselines"].values():
        b["speedup"] = b["us"] / row["us"] if b.get("us") else None
    return row


def _base_cell(b):
    if not b or not b.get("us"):
        return f"{'failed' if b else '-':>13} {'':>7}"
    return f"{b['us']:10.1f} [{METHOD_TAG[b['method']]}] {b['speedup']:6.1f}x"


def format_table(rows, copy_gbs, launch, baseline_names):
    """Lines of the final table: debias_sample rows, then logit_mean_update rows."""
    lines = []
    sample = [r for r in rows if r["op"] == "debias_sample"]
    acc = [r for r in rows if r["op"] == "logit_mean_update"]
    key = lambda r: (r["vocab"] != VOCAB, r["vocab"], r["config"], r["batch"])  # noqa: E731
    legend = ("[G] median over CUDA-graph replays (device time); [E] CUDA events around eager calls (may include "
              "host work); [W] wall clock (CPU). x = baseline time / ours (> 1: ours faster). "
              f"floor = bytes / copy bandwidth ({copy_gbs:.0f} GB/s) + one launch ({launch:.1f} us).")
    tables = (("debias_sample", sample, "config", "debias_sample (bf16 logits; bytes = logits + DISTINCT bias rows)"),
              ("logit_mean_update", acc, "",
               "logit_mean_update (bf16 inputs, L = 4; the references read a host flag: events only)"))
    for op, op_rows, first, title in tables:
        if not op_rows:
            continue
        lines.append(title)
        head = (f"{first:9s} {'B':>4s} {'V':>6s} {'tsdi us':>11s} {'eager':>7s} {'floor':>7s} {'/floor':>6s} "
                f"{'GB/s':>6s} {'%copy':>5s}")
        for name in baseline_names[op]:
            head += f" | {name + ' us':>14s} {'x':>6s}"
        lines.append(head)
        for r in sorted(op_rows, key=key):
            lines.append(_row_line(r, baseline_names[op]))
    lines.append(legend)
    return lines


def _row_line(r, names):
    lead = f"{r['config']:9s} {r['batch']:4d} {r['vocab']:6d}"
    if not r.get("us"):
        return f"{lead} {r.get('error') or r.get('skipped')}"
    line = (f"{lead} {r['us']:7.1f} [{METHOD_TAG[r['method']]}] {r['eager_us']:7.1f} {r['floor_us']:7.1f} "
            f"{r['x_floor']:5.1f}x {r['gbs']:6.0f} {100 * r['frac_copy_bw']:4.0f}%")
    for name in names:
        line += " | " + _base_cell(r["baselines"].get(name))
    if r.get("bad_rows"):
        line += f"  !! {r['bad_rows']} rows returned a status code"
    return line


def format_kernels(row):
    lines = []
    for name, kernels in row.get("kernels", {}).items():
        total = sum(k[1] for k in kernels)
        lines.append(f"    {name}: {total:.1f} us of kernels per call, "
                     f"{sum(k[2] for k in kernels):.0f} launches")
        lines += [f"      {us:9.2f} us  x{n:<4.0f} {kname}" for kname, us, n in kernels]
    return lines


def _write(result, path):
    """Atomically (a killed phase leaves the previous complete file, never half of one), with the user's umask."""
    from tsdi_kernels.pipeline.files import atomic_write

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, write)


def run_timings(args, cases):
    """The timings phase (a subprocess of main): cases in order until args.timings_until, JSON after each."""
    global DEADLINE
    DEADLINE = args.timings_until
    import torch
    import triton

    import tsdi_kernels
    from tsdi_kernels.kernels.accumulate import reference as acc_reference

    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (--dry-run lists the cases, --cpu-smoke checks this script)")
        return 2
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} CPUs)",
              "sm_count": torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else None,
              "torch": torch.__version__, "triton": triton.__version__, "python": sys.version.split()[0],
              "backends": tsdi_kernels.backends(), "quick": args.quick, "profile": args.profile,
              "sampling": SAMPLING, "budget_s": args.budget_s}
    if device == "cpu":
        result["load_average"] = os.getloadavg()
    result["copy_gbs"] = copy_bandwidth_gbs(device)
    result["launch_us"] = launch_us(device)
    print(f"device {result['device']}, copy bandwidth {result['copy_gbs']:.0f} GB/s, one launch "
          f"{result['launch_us']:.1f} us, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    result["rows"] = rows = []
    _write(result, args.out)  # the machine's figures, kept even if the phase is killed before its first case
    baselines = sample_baselines(device, not args.no_compile)
    compiled_acc = None if args.no_compile else torch.compile(acc_reference.logit_mean_update, dynamic=True)
    names = {"debias_sample": list(baselines),
             "logit_mean_update": ["reference"] + ([] if args.no_compile else ["compiled_ref"])}
    result["baseline_names"] = names
    for case in cases:
        if past_deadline():
            rows.append(dict(case, skipped="time budget"))
            continue
        t_case = time.time()
        try:
            if case["op"] == "debias_sample":
                row = bench_sample(case, args.reps, baselines, device, args.profile)
            else:
                row = bench_accumulate(case, args.reps, compiled_acc, device)
        except Exception as exc:  # e.g. out of memory: recorded, the run goes on
            row = dict(case, error=f"{type(exc).__name__}: {exc}"[:300])
            if device == "cuda":
                torch.cuda.empty_cache()
        row["case_s"] = round(time.time() - t_case, 1)
        rows.append(derive(row, result["copy_gbs"], result["launch_us"]))
        print(_row_line(row, names[row["op"]]) if row.get("us") else
              f"{row['op']} {row['config']} B={row['batch']} V={row['vocab']}: {row.get('error')}", flush=True)
        for line in format_kernels(row):
            print(line)
        result["seconds"] = round(time.time() - _T0, 1)
        _write(result, args.out)  # after every case: a run cut short keeps what it measured
    return 0


def print_report(result):
    rows = result.get("rows", [])
    names = result.get("baseline_names", {"debias_sample": [], "logit_mean_update": []})
    if "device" in result:
        where = f"{result['device']} ({result['sm_count']} SMs)" if result["sm_count"] else (
            f"{result['device']}, load average {' '.join(f'{x:.2f}' for x in result['load_average'])} at the start")
        print(f"{where}, torch {result['torch']}, triton {result['triton']}, python {result['python']}; "
              f"backends {result['backends']['debias_sample']}")
        for line in format_table(rows, result["copy_gbs"], result["launch_us"], names):
            print(line)
    if "tests" in result:
        print(f"GPU tests: {result['tests']['summary']} (exit {result['tests']['returncode']}, "
              f"{result['tests']['seconds']} s)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    cases = planned_cases(args.quick, args.cpu_smoke)
    if args.dry_run:
        for c in cases:
            print(f"{c['op']:18s} {c['config']:9s} B={c['batch']:<4d} V={c['vocab']}")
        print(f"{len(cases)} cases; JSON -> {args.out}")
        return 0
    if args.timings_until is not None:
        return run_timings(args, cases)
    import tsdi_kernels.pipeline.files  # noqa: F401  (the JSON writer: imported before the budget is split)

    run_tests_after = not (args.skip_tests or args.cpu_smoke)
    budgets = phase_budgets(args.budget_s, args.tests_s, time.time() - _T0, run_tests_after)
    print(f"budget {args.budget_s:.0f} s: timings {budgets['timings']:.0f} s, tests {budgets['tests']:.0f} s, "
          f"report {MARGIN_S:.0f} s", flush=True)
    if os.path.exists(args.out):
        os.remove(args.out)  # what is read back below is this run's
    # the timings stop by themselves at `until` (checked between and inside measurements); the kill 5 s later
    # covers what they cannot interrupt (a Triton JIT, a torch.compile, a hung kernel)
    until = time.time() + max(0.0, budgets["timings"] - 5.0)
    code, seconds = run_bounded([sys.executable, os.path.abspath(__file__), *argv, "--timings-until", str(until)],
                                budgets["timings"])
    if code == 2:
        return 2  # no CUDA device (the phase said so)
    result = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            result = json.load(f)
    result["timings_phase"] = {"returncode": code, "seconds": seconds}
    if code == 124:
        print(f"timings killed after {seconds} s (their share of the budget): the table has the cases before")
    if run_tests_after:
        left = phase_budgets(args.budget_s, args.tests_s, time.time() - _T0, True)
        result["tests"] = run_tests(left["tests"])
    print()
    print_report(result)
    skipped = sum(1 for r in result.get("rows", []) if r.get("skipped"))
    result["seconds"] = round(time.time() - _T0, 1)
    _write(result, args.out)
    print(f"wrote {args.out} ({result['seconds']} s{f', {skipped} cases skipped for time' if skipped else ''})")
    return 0 if code == 0 and result.get("tests", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
