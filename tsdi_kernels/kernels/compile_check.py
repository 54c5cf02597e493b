"""Compile every Triton kernel and configuration for sm_90 / sm_80 without a GPU, and report registers / spills.

    python -m tsdi_kernels.kernels.compile_check [--arch 90 80] [--json out.json] [--quick]

`triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32))` lowers a kernel to
PTX and a cubin on any machine. Without a driver the CompiledKernel has no n_regs, so the cubin Triton built is
read with the bundled `cuobjdump -res-usage` (registers; stack bytes = spills), or with --ptxas the PTX is
assembled again by the bundled `ptxas -v` (exact spill store / load bytes, twice the time). Must run WITHOUT
TRITON_INTERPRET (the interpreter replaces @triton.jit functions), hence a module the tests run in a subprocess.

PTX analysis: ptx_stats.py (barriers, hot-loop barriers, load widths).

The configurations are the launchers' specializations: logits dtype x bias for the sampler, input dtype x
reference x mask x normalize for the accumulator, at the GPU block sizes the launchers pick (sample.plan).
Hot configurations (the kernels that stream the logits / inputs in the common case) must not spill.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

if os.environ.get("TRITON_INTERPRET", "0") == "1":  # before the kernels are imported
    raise SystemExit("compile_check must run without TRITON_INTERPRET=1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from .accumulate import triton_impl as accumulate  # noqa: E402
from .ptx_stats import ptx_stats  # noqa: E402
from .sampling import triton_impl as sample  # noqa: E402

_TY = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}
_DIV16 = {"stride_b", "vocab", "chunk"}  # ints the launcher's shapes make multiples of 16 in practice


def _sampler_configs(quick: bool):
    cfg = sample.plan(64, 128256, "cuda")
    block, keep = cfg["block"], cfg["keep"]
    # quick: a covering set (each dtype, each bias flag, the hot bf16 + bias case); else the full product
    variants = ([("bf16", True), ("fp32", False), ("fp16", True)] if quick
                else [(d, b) for d in ("bf16", "fp32", "fp16") for b in (True, False)])
    common = {"positions_ptr": "*i64", "temperature_ptr": "*fp32", "top_k_ptr": "*i64", "top_p_ptr": "*fp32",
              "seed_ptr": "*i64", "min_p_ptr": "*fp32", "strength": "fp32", "vocab": "i32", "n_bias_rows": "i32",
              "stride_b": "i32"}
    for dtype, has_bias in variants:
        # quick: the stream kernel (20-25 s per compile, its sort dominates) skips fp16, whose load converts like
        # bf16's; the fallback kernel covers fp16 loads there
        if not (quick and dtype == "fp16"):
            sig = dict(common, logits_ptr=_TY[dtype], bias_ptr="*fp32", chunk="i32", part_f_ptr="*fp32",
                       part_i_ptr="*i64", cand_ptr="*i64")
            for has_min_p in ((False, True) if (dtype, has_bias) == ("bf16", True) else (False,)):
                yield ("sample._stream_kernel", f"{dtype}-bias{int(has_bias)}" + "-minp" * has_min_p, True,
                       sample._stream_kernel, sig, {"HAS_BIAS": has_bias, "BLOCK": block, "KEEP": keep,
                                                    "TOP_J": cfg["top_j"], "HAS_MIN_P": has_min_p},
                       cfg["warps_stream"])
        sig = dict(common, logits_ptr=_TY[dtype], bias_ptr="*fp32", stats_ptr="*fp32", out_ptr="*i64")
        for has_min_p in ((False, True) if (dtype, has_bias) == ("bf16", True) else (False,)):
            yield ("sample._fallback_kernel", f"{dtype}-bias{int(has_bias)}" + "-minp" * has_min_p, False,
                   sample._fallback_kernel, sig, {"HAS_BIAS": has_bias, "BLOCK": cfg["block_fallback"],
                                                  "HAS_MIN_P": has_min_p}, cfg["warps_fallback"])
    sig = dict(common, n_split="i32", part_f_ptr="*fp32", part_i_ptr="*i64", cand_ptr="*i64", gather_ptr="*i64",
               out_ptr="*i64",
               stats_ptr="*fp32")
    for has_min_p in (False, True):
        yield ("sample._finish_kernel", f"keep{keep}" + "-minp" * has_min_p, True, sample._finish_kernel, sig,
               {"KEEP": keep, "BLOCK": block, "MAX_SPLITS": sample.MAX_SPLITS, "TOP_J": cfg["top_j"],
                "HAS_MIN_P": has_min_p}, cfg["warps_finish"])


def _accumulator_variants(quick: bool):
    """(dtype, has_ref, has_mask, normalize). quick: a covering set (each value of each flag, the hot
    bf16 / reference / normalize / no-mask case first); else the full product."""
    if quick:
        return [("bf16", True, False, True), ("fp32", True, True, False), ("bf16", False, True, True),
                ("fp16", False, False, False)]
    return [(d, r, m, n) for d in ("bf16", "fp32", "fp16") for r in (True, False) for m in (True, False)
            for n in (True, False)]


def _accumulator_configs(quick: bool):
    block = 1024
    for dtype, has_ref, has_mask, normalize in _accumulator_variants(quick):
        cfg = f"{dtype}-ref{int(has_ref)}-mask{int(has_mask)}-norm{int(normalize)}"
        flags = {"HAS_REF": has_ref, "HAS_MASK": has_mask, "NORMALIZE": normalize}
        sig = {"aligned_ptr": _TY[dtype], "reference_ptr": _TY[dtype], "mask_ptr": "*u8", "part_ptr": "*fp32",
               "err_ptr": "*i64", "vocab": "i32", "chunk": "i32"}
        yield ("accumulate._row_stats_kernel", cfg, True, accumulate._row_stats_kernel, sig,
               dict(flags, BLOCK=block), 4)
        sig = dict(sig, mean_ptr="*fp32", m2_ptr="*fp32", count_ptr="*i64", batch="i32", length="i32",
                   n_chunks="i32", group_ptr="*fp32", group_rows="i32")
        for grouped in (False, True) if not quick or dtype == "bf16" else (False,):
            yield ("accumulate._merge_kernel", f"{cfg}-grouped{int(grouped)}", not grouped, accumulate._merge_kernel,
                   sig, dict(flags, BLOCK_V=block, MAX_S1=accumulate.MAX_S1, GROUPED=grouped), 4)
    sig = {"mean_ptr": "*fp32", "m2_ptr": "*fp32", "count_ptr": "*i64", "err_ptr": "*i64", "group_ptr": "*fp32",
           "length": "i32", "vocab": "i32", "n_groups": "i32"}
    yield ("accumulate._combine_kernel", f"block{block}", False, accumulate._combine_kernel, sig,
           {"BLOCK_V": block}, 4)
    for has_mask in (True, False):
        sig = {"count_ptr": "*i64", "mask_ptr": "*u8", "err_ptr": "*i64", "where_ptr": "*i64", "batch": "i32",
               "length": "i32"}
        yield ("accumulate._count_kernel", f"mask{int(has_mask)}", False, accumulate._count_kernel, sig,
               {"HAS_MASK": has_mask, "BLOCK_L": 128}, 4)


def configs(quick: bool = False):
    """(kernel, config id, hot, fn, signature of runtime args, constexprs, num_warps) for every configuration."""
    yield from _sampler_configs(quick)
    yield from _accumulator_configs(quick)


def _ptxas(arch: int) -> str:
    """The ptxas Triton itself uses for `arch` (the bundled `ptxas` may be older than the PTX version)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(arch).path
    except Exception:  # other Triton versions: the newest bundled binary
        bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        for name in ("ptxas-blackwell", "ptxas"):
            if os.path.exists(os.path.join(bin_dir, name)):
                return os.path.join(bin_dir, name)
        raise


def ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers and spill bytes from `ptxas -v` on the PTX (its `.target` line names the architecture)."""
    target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([_ptxas(arch), "-v", f"-arch={target}", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True)
    text = res.stderr + res.stdout
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    loads = re.search(r"(\d+) bytes spill loads", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(stores.group(1)) if stores else 0,
            "spill_loads": int(loads.group(1)) if loads else 0}


def cubin_usage(cubin: bytes) -> dict:
    """Registers and stack / local bytes of the cubin Triton built, from the bundled `cuobjdump -res-usage`
    (milliseconds, where assembling the PTX again with `ptxas -v` costs as much as the compile). Register spills
    live in the stack frame, so stack bytes > 0 is what "spills" means here; --ptxas gives exact spill bytes."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        text = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    regs, stack, _, local = (int(g) for g in usage.groups())
    return {"registers": regs, "stack_bytes": stack, "local_bytes": local, "spill_stores": stack + local,
            "spill_loads": stack + local}


# The input each kernel streams: its loads in the hot loop give load_bytes (kernels not named: any global load).
STREAMED = {"sample._stream_kernel": "logits_ptr", "sample._fallback_kernel": "logits_ptr",
            "accumulate._row_stats_kernel": "aligned_ptr", "accumulate._merge_kernel": "aligned_ptr"}

# Register caps the launchers pass (`maxnreg`): the occupancy the launch plans assume.
MAXNREG = {"sample._stream_kernel": sample.MAXNREG_STREAM}


def compile_one(fn, signature: dict, constexprs: dict, num_warps: int, arch: int, exact_spills=False,
                maxnreg=None, streamed=None) -> dict:
    """Compile one configuration: registers / spills (cubin or ptxas), shared memory, and ptx_stats.py (streamed:
    the argument whose loads give load_bytes, STREAMED[kernel])."""
    sig = {name: signature.get(name, "constexpr") for name in fn.arg_names}
    missing = [n for n in fn.arg_names if n not in signature and n not in constexprs]
    if missing:
        raise ValueError(f"{fn.__name__}: no type for {missing}")
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if sig[n].startswith("*") or n in _DIV16}
    src = ASTSource(fn=fn, signature=sig, constexprs=dict(constexprs), attrs=attrs)
    target = GPUTarget("cuda", arch, 32)
    t0 = time.time()
    options = {"num_warps": num_warps, **({"maxnreg": maxnreg} if maxnreg else {})}
    kernel = triton.compile(src, target=target, options=options)
    out = {"compile_s": round(time.time() - t0, 2), "shared_bytes": kernel.metadata.shared}
    out.update(ptxas_usage(kernel.asm["ptx"], arch) if exact_spills else cubin_usage(kernel.asm["cubin"]))
    out.update(ptx_stats(kernel.asm["ptx"], [n for n in fn.arg_names if sig[n] != "constexpr"], streamed))
    return out


def _loop_bars(row) -> str:
    """"static (min-max per iteration)" barriers of the hot loop, "-" without one."""
    if row.get("loop_barriers") is None:
        return "-"
    lo, hi = row.get("loop_barriers_min"), row.get("loop_barriers_max")
    return f"{row['loop_barriers']}" + (f"({lo}-{hi})" if lo is not None else "")


def run(archs=(90, 80), quick=False, exact_spills=False) -> list:
    rows = []
    for kernel, cfg, hot, fn, sig, constexprs, num_warps in configs(quick):
        for arch in archs:
            row = {"kernel": kernel, "config": cfg, "arch": f"sm_{arch}", "hot": hot, "num_warps": num_warps}
            try:
                row.update(compile_one(fn, sig, constexprs, num_warps, arch, exact_spills, MAXNREG.get(kernel),
                                       STREAMED.get(kernel)), ok=True)
            except Exception as exc:  # reported, and the exit status says it failed
                row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
            rows.append(row)
            print(f"{kernel:32s} {cfg:28s} {row['arch']:6s} " + (
                f"regs={row['registers']:<4} spill_st={row['spill_stores']:<4} spill_ld={row['spill_loads']:<4}"
                f" smem={row['shared_bytes']:<6} bar={row['barriers']:<4} loop_bar={_loop_bars(row):<11}"
                f" ld={row['load_bytes']}B {row['compile_s']}s" if row["ok"] else "FAILED " + row["error"]),
                flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--quick", action="store_true",
                    help="covering sets of dtype / flag combinations instead of the full products")
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--ptxas", action="store_true", help="exact spill bytes from `ptxas -v` (twice as slow)")
    args = ap.parse_args(argv)
    rows = run(tuple(args.arch), args.quick, args.ptxas)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    failed = [r for r in rows if not r["ok"]]
    spilled = [r for r in rows if r["ok"] and r["hot"] and (r["spill_stores"] or r["spill_loads"])]
    print(f"{len(rows)} compiled, {len(failed)} failed, {len(spilled)} hot configurations spill")
    return 1 if failed or spilled else 0


if __name__ == "__main__":
    sys.exit(main())
