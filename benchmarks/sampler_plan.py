"""Launch plan of the Triton sampler per batch size, with the occupancy of its compiled kernels (no GPU needed).

    python benchmarks/sampler_plan.py [--json compile_check.json] [--vocab 128256] [--n-sm 132] [--dtype bf16]

For B in {1, 8, 64, 256}: `triton_impl.plan(B, V, 'cuda', n_sm)` gives BLOCK, the splits of each row and the
warps of each kernel; the registers per thread come from the compiled kernels for sm_90, read from the JSON of
`python -m tsdi_kernels.kernels.compile_check --quick --json out.json` (run WITHOUT TRITON_INTERPRET), or, without
--json, compiled here the same way (compile_check.compile_one; about a minute on a cold Triton cache).
Occupancy, as the issue defines it (sm_90: 65536 registers per SM, at most 32 CTAs per SM):

    threads  = warps * 32
    CTAs/SM  = min(floor(65536 / (registers * threads)), 32)
    waves    = ceil(programs / (n_sm * CTAs/SM))          (programs of the streaming kernel: B * splits)
    bytes per thread per load = BLOCK * element size / threads

The kernel table adds, from each kernel's PTX (ptx_stats.py: STATIC instruction counts, not executed
ones), the barriers in the kernel and in its hot loop (all of the loop's, then the fewest and most on one path
through one iteration: the stream kernel's fewest is a greedy row's tile, its most includes the candidate-buffer cut
and its sort), and the bytes per thread of the hot loop's loads of the logits (`ld.global.v2.b32` = 8), beside
the formula's in the plan table ("ptx").

The register file is allocated per warp in units of 256 registers (8 per thread), and shared memory (228 KB per
SM on sm_90, 1 KB of it reserved per CTA) can bind first: the kernel table shows both, so a plan that relies on
the simple formula can be checked against them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

REGS_PER_SM, MAX_CTAS_PER_SM, SMEM_PER_SM, SMEM_RESERVED_PER_CTA, MAX_THREADS_PER_SM = 65536, 32, 233472, 1024, 2048
ELEM = {"bf16": 2, "fp16": 2, "fp32": 4}
# kernel in compile_check's rows -> (warps key of plan(), programs per row: "splits" or 1)
KERNELS = {"sample._stream_kernel": ("warps_stream", "splits"), "sample._finish_kernel": ("warps_finish", 1),
           "sample._fallback_kernel": ("warps_fallback", 1)}


def _opt(value) -> str:
    """A field older compile_check JSON lacks (or a kernel without a loop) prints as '?'."""
    return "?" if value is None else str(value)


def ctas_per_sm(registers: int, threads: int) -> int:
    """The issue's formula: register-limited CTAs per SM, at most 32."""
    return min(REGS_PER_SM // (registers * threads), MAX_CTAS_PER_SM)


def ctas_per_sm_hw(registers: int, threads: int, smem: int) -> int:
    """The same with register allocation granularity (8 per thread), shared memory and the thread limit."""
    regs = -(-registers // 8) * 8
    limits = [REGS_PER_SM // (regs * threads), MAX_CTAS_PER_SM, MAX_THREADS_PER_SM // threads]
    if smem:
        limits.append(SMEM_PER_SM // (smem + SMEM_RESERVED_PER_CTA))
    return min(limits)


def compiled_usage(json_path, dtype: str, plan: dict) -> dict:
    """kernel -> compile_check row (sm_90) for the `dtype`-with-bias configuration (or the only one it has)."""
    if json_path:
        with open(json_path) as f:
            rows = json.load(f)
    else:
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            raise SystemExit("run without TRITON_INTERPRET=1 (the kernels must compile), or pass --json")
        from tsdi_kernels.kernels import compile_check

        rows = []
        for kernel, cfg, hot, fn, sig, constexprs, warps in compile_check.configs(quick=True):
            if kernel in KERNELS and (cfg == f"{dtype}-bias1" or not cfg.startswith(("bf16", "fp32", "fp16"))):
                row = {"kernel": kernel, "config": cfg, "arch": "sm_90", "num_warps": warps, "ok": True}
                row.update(compile_check.compile_one(fn, sig, constexprs, warps, 90,
                                                     maxnreg=compile_check.MAXNREG.get(kernel),
                                                     streamed=compile_check.STREAMED.get(kernel)))
                rows.append(row)
    usage = {}
    for kernel in KERNELS:
        mine = [r for r in rows if r["kernel"] == kernel and r["arch"] == "sm_90" and r.get("ok", True)]
        exact = [r for r in mine if r["config"] == f"{dtype}-bias1"]
        if exact or mine:
            usage[kernel] = (exact or mine)[0]
    return usage


def plan_table(vocab: int, n_sm: int, dtype: str, usage: dict, batches=(1, 8, 64, 256)) -> list:
    from tsdi_kernels.kernels.sampling import triton_impl

    rows = []
    for batch in batches:
        cfg = triton_impl.plan(batch, vocab, "cuda", n_sm=n_sm)
        row = {"batch": batch, "vocab": vocab, "plan": cfg}
        for kernel, (warps_key, per_row) in KERNELS.items():
            u = usage.get(kernel)
            warps = (u or {}).get("num_warps") or cfg.get(warps_key)
            programs = batch * (cfg.get("splits", 1) if per_row == "splits" else 1)
            k = {"programs": programs, "warps": warps}
            if u and u.get("registers") and warps:
                threads = warps * 32
                per_sm = ctas_per_sm(u["registers"], threads)
                per_sm_hw = ctas_per_sm_hw(u["registers"], threads, u.get("shared_bytes") or 0)
                k.update(registers=u["registers"], threads=threads, ctas_per_sm=per_sm, ctas_per_sm_hw=per_sm_hw,
                         waves=math.ceil(programs / (n_sm * per_sm)) if per_sm else None,
                         waves_hw=math.ceil(programs / (n_sm * per_sm_hw)) if per_sm_hw else None)
            row[kernel] = k
        stream = row["sample._stream_kernel"]
        if stream.get("threads") and "block" in cfg:
            row["bytes_per_thread_per_load"] = cfg["block"] * ELEM[dtype] // stream["threads"]
        row["bytes_per_thread_per_load_ptx"] = (usage.get("sample._stream_kernel") or {}).get("load_bytes")
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="compile_check --json output (else the kernels are compiled here for sm_90)")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--n-sm", type=int, default=132, help="SMs of the GPU (H100 / H200 SXM: 132)")
    ap.add_argument("--dtype", choices=sorted(ELEM), default="bf16", help="logits dtype (bytes per load)")
    ap.add_argument("--out", help="write the table as JSON here")
    args = ap.parse_args(argv)

    from tsdi_kernels.kernels.sampling import triton_impl

    usage = compiled_usage(args.json, args.dtype, triton_impl.plan(64, args.vocab, "cuda", n_sm=args.n_sm))
    print(f"compiled kernels, sm_90 ({args.json or 'compiled here'}):")
    print(f"  {'kernel':26s} {'config':14s} {'warps':>5s} {'regs':>4s} {'spills':>6s} {'smem':>6s} "
          f"{'CTAs/SM':>7s} {'(hw)':>5s} {'barriers':>8s} {'loop':>4s} {'min-max':>7s} {'B/thr':>5s}  loop loads (B/thr)")
    for kernel, u in usage.items():
        threads = u["num_warps"] * 32
        lo, hi = u.get("loop_barriers_min"), u.get("loop_barriers_max")
        loads = " ".join(f"{a}:{'/'.join(map(str, w))}" for a, w in (u.get("loop_loads") or {}).items())
        print(f"  {kernel:26s} {u['config']:14s} {u['num_warps']:5d} {u['registers']:4d} "
              f"{u.get('spill_stores', 0):6d} {u.get('shared_bytes', 0):6d} "
              f"{ctas_per_sm(u['registers'], threads):7d} {ctas_per_sm_hw(u['registers'], threads, u.get('shared_bytes') or 0):5d} "
              f"{_opt(u.get('barriers')):>8} {_opt(u.get('loop_barriers')):>4} "
              f"{'?' if lo is None else f'{lo}-{hi}':>7} {_opt(u.get('load_bytes')):>5}  {loads or '?'}")
    rows = plan_table(args.vocab, args.n_sm, args.dtype, usage)
    print(f"\nlaunch plan of the sampler, V = {args.vocab} {args.dtype}, {args.n_sm} SMs "
          f"(CTAs/SM = min(floor(65536 / (regs * threads)), 32); (hw) adds register granularity, shared memory and "
          f"the thread limit)")
    print(f"  {'B':>4s} {'BLOCK':>5s} {'splits':>6s} {'chunk':>6s} {'programs':>8s} {'warps':>5s} {'regs':>4s} "
          f"{'CTAs/SM':>7s} {'slots':>5s} {'waves':>5s} {'(hw)':>4s} {'B/thr/load':>10s} {'(ptx)':>5s} | "
          f"{'finish prog/waves':>17s} {'fallback prog/waves':>19s}")
    for r in rows:
        cfg, s = r["plan"], r["sample._stream_kernel"]
        fin, fb = r["sample._finish_kernel"], r["sample._fallback_kernel"]
        slots = args.n_sm * s["ctas_per_sm"] if s.get("ctas_per_sm") else None
        print(f"  {r['batch']:4d} {cfg.get('block', '?'):>5} {cfg.get('splits', '?'):>6} {cfg.get('chunk', '?'):>6} "
              f"{s['programs']:8d} {s['warps']:5d} {s.get('registers', '?'):>4} {s.get('ctas_per_sm', '?'):>7} "
              f"{slots or '?':>5} {s.get('waves', '?'):>5} {s.get('waves_hw', '?'):>4} "
              f"{r.get('bytes_per_thread_per_load', '?'):>10} {_opt(r.get('bytes_per_thread_per_load_ptx')):>5} | "
              f"{fin['programs']:>11}/{fin.get('waves', '?'):<5} {fb['programs']:>13}/{fb.get('waves', '?'):<5}")
    print(f"  plan keys: {sorted(rows[0]['plan'])}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"usage": usage, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
