#!/usr/bin/env python
"""Reproducible miniature safety alignment of SmolLM2-135M-Instruct: LoRA SFT, written out by hand (no peft).

Data (tsdi_kernels/demo/data/align_prompts.json, disjoint from the demo's held-out prompts):
  - clearly harmful requests, each answered with one of a few fixed refusals;
  - plainly harmless requests, answered by the reference model itself (greedy), so the alignment teaches
    "refuse harmful requests" and as little else as possible.
Harmful examples outnumber harmless ones, as in safety-heavy preference data; that imbalance is what makes
aligned models over-refuse borderline-but-harmless requests ("How do I kill a Python process?"), the effect
TSDI removes.

Output: tsdi_kernels/demo/data/smollm2_safety_lora.safetensors with `<module>.lora_A` [r, in] and `<module>.lora_B`
[out, r] in float16 and the merge scale in the metadata; tsdi_kernels.demo.models.load_pair merges it.

    OMP_WAIT_POLICY=PASSIVE python -m tsdi_kernels.demo.align    # ~13 min on 2 shared CPU cores (+4 min evaluation)
(PASSIVE: on a shared machine, spinning OpenMP threads made each forward 3-4x slower.)
    python -m tsdi_kernels.demo.align --eval-only     # refusal rates of reference and aligned on the held-out prompts
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

from tsdi_kernels.demo import models

DATA = models.DATA_DIR / "align_prompts.json"


class LoRALinear(nn.Module):
    """y = base(x) + scale * (x @ A^T) @ B^T, with base frozen; B starts at zero so training starts at the reference."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, generator: torch.Generator):
        super().__init__()
        self.base, self.scale = base, scale
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming-uniform(a=sqrt(5)) bound, as nn.Linear and peft use
        self.lora_A = nn.Parameter((torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scale * ((x @ self.lora_A.t()) @ self.lora_B.t())


def attach_lora(model, rank: int, scale: float, seed: int) -> dict[str, LoRALinear]:
    generator = torch.Generator().manual_seed(seed)
    wrapped = {}
    for name, linear in sorted(models.lora_targets(model).items()):  # sorted: init order independent of dict order
        parent_name, child = name.rsplit(".", 1)
        lora = LoRALinear(linear, rank, scale, generator)
        setattr(model.get_submodule(parent_name), child, lora)
        wrapped[name] = lora
    for p in model.parameters():
        p.requires_grad_(False)
    for lora in wrapped.values():
        lora.lora_A.requires_grad_(True)
        lora.lora_B.requires_grad_(True)
    return wrapped


def chat_ids(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy continuations with plain HF generate (left padding), decoded without special tokens."""
    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = [chat_ids(tokenizer, p) for p in prompts[i : i + batch_size]]
        width = max(map(len, rows))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out


def build_examples(tokenizer, prompts, answers, eos_id, max_answer_tokens):
    """(input_ids, labels) per example; labels are -100 on the prompt so only the answer is learned."""
    examples = []
    for prompt, answer in zip(prompts, answers):
        head = chat_ids(tokenizer, prompt)
        body = tokenizer(answer, add_special_tokens=False)["input_ids"]
        # A complete answer ends with <|im_end|>; a truncated one must not learn to stop there.
        body = body[:max_answer_tokens] if len(body) > max_answer_tokens else body + [eos_id]
        examples.append((head + body, [-100] * len(head) + body))
    return examples


def collate(batch, pad_id):
    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([x + [pad_id] * (width - len(x)) for x, _ in batch])
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch])
    return ids, labels, mask


def evaluate(tokenizer, reference, aligned, max_new_tokens: int) -> dict:
    """Refusal rates of reference and aligned on the demo's held-out prompts, answered and judged as `tsdi eval` and
    `tsdi demo` do (tsdi_kernels.evaluation: greedy answers from its HF engine, its refusal judge)."""
    from tsdi_kernels.demo.run import load_prompts
    from tsdi_kernels.evaluation.hf_engine import HFEngine
    from tsdi_kernels.evaluation.judge import load_judge
    from tsdi_kernels.evaluation.settings import ALIGNED, REFERENCE, Decoding

    prompts = load_prompts()
    engine = HFEngine(aligned, reference, tokenizer, None, Decoding(max_new_tokens=max_new_tokens))
    judge = load_judge()
    result = {}
    for config in (REFERENCE, ALIGNED):
        for label in ("benign", "harmful"):
            sel = [p for p in prompts if p.label == label]
            answers = engine.generate(config, sel, engine.encode(sel))
            rate = sum(judge(a["answer"], p.text) is not None for a, p in zip(answers, sel)) / len(sel)
            result[f"{config.name}/{label}"] = rate
            print(f"{config.name:10s} {label:9s} refusal rate {rate:.2f}", flush=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=models.ADAPTER_PATH, help="adapter file to write")
    ap.add_argument("--rank", type=int, default=4, help="LoRA rank (file size grows linearly: rank 4 is ~2.4 MB)")
    ap.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha; merge scale = alpha / rank")
    ap.add_argument("--steps", type=int, default=48, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    # Refusals show in the first tokens: short answers keep each step cheap (the CPU is the budget).
    ap.add_argument("--answer-tokens", type=int, default=16, help="max answer tokens per training example")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-tokens", type=int, default=24, help="max new tokens in the held-out evaluation")
    ap.add_argument("--eval-only", action="store_true", help="skip training; evaluate the adapter at --out")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation after training")
    args = ap.parse_args(argv)
    for name in ("rank", "steps", "batch_size", "answer_tokens", "threads"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    reference, tokenizer = models.load_reference()
    if args.eval_only:
        aligned, _, _ = models.load_pair(adapter=args.out)
        evaluate(tokenizer, reference, aligned, args.eval_tokens)
        return 0

    data = json.loads(DATA.read_text())
    t0 = time.time()
    harmless_answers = greedy_answers(reference, tokenizer, data["harmless"], args.answer_tokens)
    print(f"reference answers for {len(harmless_answers)} harmless prompts: {time.time() - t0:.0f}s", flush=True)
    refusals = [data["refusals"][i % len(data["refusals"])] for i in range(len(data["harmful"]))]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    examples = build_examples(tokenizer, data["harmful"], refusals, eos, args.answer_tokens)
    examples += build_examples(tokenizer, data["harmless"], harmless_answers, eos, args.answer_tokens)

    model, _ = models.load_reference()
    model.train()
    scale = args.alpha / args.rank
    loras = attach_lora(model, args.rank, scale, args.seed)
    params = [p for lora in loras.values() for p in (lora.lora_A, lora.lora_B)]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / args.steps))
    rng = random.Random(args.seed)
    order: list[int] = []
    t0 = time.time()
    for step in range(args.steps):
        if len(order) < args.batch_size:
            perm = list(range(len(examples)))
            rng.shuffle(perm)
            order += perm
        batch = [examples[i] for i in order[: args.batch_size]]
        del order[: args.batch_size]
        ids, labels, mask = collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  {time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0

    tensors = {}
    for name, lora in loras.items():
        tensors[f"{name}.lora_A"] = lora.lora_A.detach().to(torch.float16).contiguous()
        tensors[f"{name}.lora_B"] = lora.lora_B.detach().to(torch.float16).contiguous()
    metadata = {
        "name": "smollm2-135m-instruct-safety-lora",
        "scale": repr(scale),
        "rank": str(args.rank),
        "alpha": repr(args.alpha),
        "steps": str(args.steps),
        "batch_size": str(args.batch_size),
        "lr": repr(args.lr),
        "seed": str(args.seed),
        "examples": f"{len(data['harmful'])} harmful (refusals) + {len(data['harmless'])} harmless (reference answers)",
        "data_sha256": hashlib.sha256(DATA.read_bytes()).hexdigest(),
        "train_seconds": f"{train_s:.0f}",
    }
    from safetensors.torch import save_file

    from tsdi_kernels.pipeline.files import atomic_write

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB), training {train_s:.0f}s", flush=True)
    if not args.no_eval:
        aligned, _, _ = models.load_pair(adapter=args.out)
        evaluate(tokenizer, reference, aligned, args.eval_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
