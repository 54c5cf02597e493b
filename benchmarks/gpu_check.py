"""The one script to run on a GPU machine: GPU tests, then timings of the Triton kernels against baselines.

    PYTHONPATH=. python benchmarks/gpu_check.py [--quick] [--out gpu_check.json] [--skip-tests] [--dry-run]

1. runs `pytest -m gpu tests/test_gpu.py` (tiers at real sizes, CUDA graph, torch.compile) and records the result;
2. measures the copy bandwidth of this GPU (device-to-device copy of 1 GiB: 2 bytes moved per byte copied);
3. for debias_sample and logit_mean_update over B in {1, 8, 64, 256} x V in {32000, 128256, 151936}: median time
   over CUDA-graph replays (CUDA events where a baseline cannot be captured), effective GB/s over the bytes the
   op must move, the fraction of the copy bandwidth, and the speed-up over baselines measured in the same run:
     debias_sample:      the HF pipeline (bias add, TemperatureLogitsWarper(0.7), TopKLogitsWarper(50),
                         TopPLogitsWarper(0.9), softmax, multinomial), torch.compile'd reference, and
                         flashinfer.sampling.top_k_top_p_sampling_from_logits plus a bias add when it imports;
     logit_mean_update:  the eager reference and the torch.compile'd reference.
Prints a table and writes JSON (--out, default $OUT/gpu_check.json when OUT is set). Under 8 minutes; --quick
measures fewer shapes. Runs from the source tree (PYTHONPATH) without the compiled extension.

Bytes moved (the floor each op is compared with):
    debias_sample      B * V * elem (logits, once) + B * V * 4 (the fp32 bias rows; rows share positions in a
                       decode step, so they are often L2 hits and the figure is conservative)
    logit_mean_update  2 * B * L * V * elem (aligned + reference, once) + 16 * L * V (mean, m2 read and written);
                       the kernel reads the inputs twice with normalize=True (see accumulate.py), so 50% of the
                       copy bandwidth is its ceiling unless L2 holds a batch.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BATCHES = (1, 8, 64, 256)
VOCABS = (32000, 128256, 151936)
QUICK_CASES = ((64, 128256), (1, 128256), (256, 151936), (8, 32000))  # the bars first
ACC_LENGTH = 4  # answer positions per accumulator update (B x 4 x V per input)
TEMPERATURE, TOP_K, TOP_P = 0.7, 50, 0.9


def planned_cases(quick: bool):
    """Shape-major (both ops per shape), the issue's bar shapes first, so a time-budget cut loses the least."""
    shapes = list(QUICK_CASES)
    if not quick:
        shapes += [(b, v) for v in VOCABS for b in BATCHES if (b, v) not in QUICK_CASES]
    return [{"op": op, "batch": b, "vocab": v} for b, v in shapes for op in ("debias_sample", "logit_mean_update")]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="GPU tests and timings of the tsdi Triton kernels")
    ap.add_argument("--quick", action="store_true", help=f"only {len(QUICK_CASES)} shapes per op")
    ap.add_argument("--out", default=os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT")
                    else "gpu_check.json", help="JSON output path (default $OUT/gpu_check.json or ./gpu_check.json)")
    ap.add_argument("--skip-tests", action="store_true", help="timings only")
    ap.add_argument("--dry-run", action="store_true", help="print the planned cases and exit (no GPU needed)")
    ap.add_argument("--reps", type=int, default=50, help="graph replays / timed iterations per measurement")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop timing new cases after this many seconds")
    return ap.parse_args(argv)


# --- timing ---------------------------------------------------------------------------------------------------


def _time_graph(fn, reps):
    """Median microseconds per call of fn over CUDA-graph replays (one replay = `inner` calls), or None."""
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
    except Exception as exc:  # not capturable (host sync inside): the caller falls back to events
        torch.cuda.synchronize()
        return None, f"{type(exc).__name__}: {exc}"[:200]
    times = []
    for _ in range(max(3, reps // inner)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / inner)
    return statistics.median(times), None


def _time_events(fn, reps):
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def measure(fn, reps):
    """(median us, method): graph replays when capturable, else CUDA events around eager calls."""
    us, why = _time_graph(fn, reps)
    if us is not None:
        return us, "graph"
    return _time_events(fn, reps), "events"


def copy_bandwidth_gbs():
    import torch

    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = _time_events(lambda: dst.copy_(src), 20)
    return 2 * n / (us * 1e-6) / 1e9


# --- cases ----------------------------------------------------------------------------------------------------


def _sampler_inputs(batch, vocab, bias_rows=16):
    import torch

    gen = torch.Generator(device="cuda").manual_seed(batch * 7 + vocab)
    logits = torch.randn(batch, vocab, device="cuda", generator=gen) * 2.0
    strong = torch.randint(0, vocab, (batch, 40), device="cuda", generator=gen)
    logits.scatter_add_(1, strong, torch.rand(batch, 40, device="cuda", generator=gen) * 12.0)
    return dict(
        logits=logits.to(torch.bfloat16),
        bias=torch.randn(bias_rows, vocab, device="cuda", generator=gen) * 0.5,
        positions=torch.randint(0, bias_rows, (batch,), device="cuda", generator=gen),
        temperature=torch.full((batch,), TEMPERATURE, device="cuda"),
        top_k=torch.full((batch,), TOP_K, dtype=torch.int64, device="cuda"),
        top_p=torch.full((batch,), TOP_P, device="cuda"),
        seed=torch.arange(batch, device="cuda") * 7919 + 1)


def _hf_pipeline():
    import torch
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = [TemperatureLogitsWarper(TEMPERATURE), TopKLogitsWarper(TOP_K), TopPLogitsWarper(TOP_P)]

    def run(a):
        scores = a["logits"].float() - a["bias"][a["positions"]]
        for w in warpers:
            scores = w(None, scores)
        return torch.multinomial(torch.softmax(scores, dim=-1), 1)[:, 0]

    return run


def bench_sample(batch, vocab, reps, baselines):
    import torch

    a = _sampler_inputs(batch, vocab)
    row = {"op": "debias_sample", "batch": batch, "vocab": vocab, "dtype": "bf16",
           "bytes": batch * vocab * (2 + 4)}
    ours = lambda: torch.ops.tsdi.debias_sample(a["logits"], a["bias"], a["positions"], a["temperature"],  # noqa
                                                a["top_k"], a["top_p"], a["seed"], 1.0)
    row["us"], row["method"] = measure(ours, reps)
    row["baselines_us"] = {}
    for name, make in baselines.items():
        try:
            fn = make(a)
            row["baselines_us"][name], _ = measure(fn, reps)
        except Exception as exc:
            row["baselines_us"][name] = None
            row.setdefault("baseline_errors", {})[name] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def _sample_baselines():
    import torch

    from tsdi_kernels import reference

    hf = _hf_pipeline()
    out = {"hf": lambda a: (lambda: hf(a))}
    compiled = torch.compile(reference.debias_sample, dynamic=True)
    out["compiled_ref"] = lambda a: (lambda: compiled(a["logits"], a["bias"], a["positions"], a["temperature"],
                                                       a["top_k"], a["top_p"], a["seed"], 1.0))
    try:
        import flashinfer.sampling as fis

        def fi(a):
            def run():
                scores = (a["logits"].float() - a["bias"][a["positions"]]) / TEMPERATURE
                return fis.top_k_top_p_sampling_from_logits(scores, a["top_k"].int(), a["top_p"])
            return run
        out["flashinfer"] = fi
    except Exception:
        pass
    return out


def bench_accumulate(batch, vocab, reps, compiled_ref):
    import torch

    from tsdi_kernels import reference

    length = ACC_LENGTH
    gen = torch.Generator(device="cuda").manual_seed(batch + vocab)
    aligned = torch.randn(batch, length, vocab, device="cuda", generator=gen).to(torch.bfloat16)
    ref = torch.randn(batch, length, vocab, device="cuda", generator=gen).to(torch.bfloat16)
    stats = [torch.zeros(length, vocab, device="cuda"), torch.zeros(length, vocab, device="cuda"),
             torch.zeros(length, dtype=torch.int64, device="cuda")]
    row = {"op": "logit_mean_update", "batch": batch, "vocab": vocab, "length": length, "dtype": "bf16",
           "bytes": 2 * batch * length * vocab * 2 + 16 * length * vocab}
    ours = lambda: torch.ops.tsdi.logit_mean_update(*stats, aligned, ref, None, True)  # noqa: E731
    row["us"], row["method"] = measure(ours, reps)
    row["baselines_us"] = {}
    for name, fn in (("reference", reference.logit_mean_update), ("compiled_ref", compiled_ref)):
        try:
            row["baselines_us"][name] = _time_events(lambda: fn(*stats, aligned, ref, None, True), max(5, reps // 5))
        except Exception as exc:
            row["baselines_us"][name] = None
            row.setdefault("baseline_errors", {})[name] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def run_tests():
    t0 = time.time()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                               os.path.join("tests", "test_gpu.py")], capture_output=True, text=True, timeout=300,
                              cwd=root)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        print(out[-3000:])
        return {"returncode": 124, "seconds": round(time.time() - t0, 1), "summary": "timed out after 300 s"}
    tail = (proc.stdout + proc.stderr)[-3000:]
    print(tail)
    return {"returncode": proc.returncode, "seconds": round(time.time() - t0, 1), "summary": tail.strip()
            .splitlines()[-1] if tail.strip() else ""}


def main(argv=None):
    args = parse_args(argv)
    cases = planned_cases(args.quick)
    if args.dry_run:
        for c in cases:
            print(f"{c['op']:18s} B={c['batch']:<4d} V={c['vocab']}")
        print(f"{len(cases)} cases; JSON -> {args.out}")
        return 0
    import torch
    import triton

    import tsdi_kernels  # noqa: F401  (registers torch.ops.tsdi)
    from tsdi_kernels import reference

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (use --dry-run to list the cases)")
        return 2
    t_start = time.time()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "backends": tsdi_kernels.backends(), "quick": args.quick}
    if not args.skip_tests:
        result["tests"] = run_tests()
    result["copy_gbs"] = copy_bandwidth_gbs()
    print(f"device {result['device']}, copy bandwidth {result['copy_gbs']:.0f} GB/s")
    sample_baselines = _sample_baselines()
    compiled_acc = torch.compile(reference.logit_mean_update, dynamic=True)
    rows = []
    for case in cases:
        if time.time() - t_start > args.budget_s:
            rows.append(dict(case, skipped="time budget"))
            continue
        try:
            if case["op"] == "debias_sample":
                row = bench_sample(case["batch"], case["vocab"], args.reps, sample_baselines)
            else:
                row = bench_accumulate(case["batch"], case["vocab"], args.reps, compiled_acc)
        except Exception as exc:  # e.g. out of memory at B=256: recorded, the run goes on
            row = dict(case, error=f"{type(exc).__name__}: {exc}"[:300])
            torch.cuda.empty_cache()
        if "us" in row:
            row["gbs"] = row["bytes"] / (row["us"] * 1e-6) / 1e9
            row["frac_copy_bw"] = row["gbs"] / result["copy_gbs"]
            row["speedup"] = {k: (v / row["us"] if v else None) for k, v in row["baselines_us"].items()}
        rows.append(row)
        _print_row(row)
    result["rows"] = rows
    result["seconds"] = round(time.time() - t_start, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0 if result.get("tests", {}).get("returncode", 0) == 0 else 1


def _print_row(row):
    if "us" not in row:
        print(f"{row['op']:18s} B={row['batch']:<4d} V={row['vocab']:<7d} {row.get('error') or row.get('skipped')}")
        return
    speed = " ".join(f"x{v:.1f} vs {k}" if v else f"- vs {k}" for k, v in row["speedup"].items())
    print(f"{row['op']:18s} B={row['batch']:<4d} V={row['vocab']:<7d} {row['us']:9.1f} us ({row['method']:6s}) "
          f"{row['gbs']:7.0f} GB/s {100 * row['frac_copy_bw']:5.1f}% of copy  {speed}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
