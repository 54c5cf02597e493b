"""Merges per row of the Triton sampler's kernel 2 on real LLM logits, for the launch plans of an H100/H200.

Runs the real kernels (the Triton interpreter on CPU tensors when there is no GPU: slow, about 2-3 s per row and
configuration, but the counts are the kernel's own, reported by the launcher) on tests/data's 24 decode steps of
SmolLM2-135M-Instruct (V = 49152) with the number of vocabulary splits plan() picks for B = 1, 8, 64, 256 on 132
SMs, and prints per configuration: splits, merges per row (mean / max), candidate-buffer cuts per row (mean / max:
cuts that dropped keys, summed over the row's splits, including a top-k split's final sort when it drops keys),
rows solved by the fallback kernel, and whether the tokens equal the reference's.

    python benchmarks/sampler_merges.py [--rows 24]
"""
import argparse
import os
import time

os.environ.setdefault("TRITON_INTERPRET", "0" if __import__("torch").cuda.is_available() else "1")

import torch  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "smollm2_decode_logits.safetensors")
CONFIGS = {"k50 p0.9": (50, 0.9), "p0.9": (0, 0.9)}


def main() -> None:
    from safetensors.torch import load_file

    from tsdi_kernels.kernels.sampling import reference, triton_impl

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=24)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = load_file(DATA)["logits"][: args.rows].to(device)
    rows, vocab = logits.shape
    print(f"{rows} real rows, V = {vocab}, T = 0.7, {'compiled (CUDA)' if device == 'cuda' else 'Triton interpreter'}")
    print(f"{'batch B':>8} {'splits':>6} {'config':>9} {'merges mean':>11} {'max':>4} {'cuts mean':>9} {'max':>4} "
          f"{'fallback':>8} {'tokens':>7}")
    seen = set()
    for batch in (1, 8, 64, 256):
        splits = triton_impl.plan(batch, vocab, "cuda", 132)["splits"]
        for name, (top_k, top_p) in CONFIGS.items():
            if (splits, name) in seen:
                continue
            seen.add((splits, name))
            args_ = (logits, None, torch.arange(rows, device=device) % 4, torch.full((rows,), 0.7, device=device),
                     torch.full((rows,), top_k, device=device), torch.full((rows,), top_p, device=device),
                     torch.arange(rows, device=device) * 7919, 1.0)
            report, t0 = {}, time.time()
            tokens = triton_impl.debias_sample(*args_, block=512, keep=512, splits=splits, report=report)
            same = torch.equal(tokens.cpu(), reference.debias_sample(*(a.cpu() if torch.is_tensor(a) else a
                                                                         for a in args_)))
            merges, cuts = report["merges"].float(), report["cuts"].float()
            print(f"{batch:>8} {splits:>6} {name:>9} {merges.mean().item():>11.2f} {int(merges.max()):>4} "
                  f"{cuts.mean().item():>9.2f} {int(cuts.max()):>4} "
                  f"{int(report['fallback'].sum()):>8} {'equal' if same else 'DIFFER':>7}   ({time.time() - t0:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
