"""Wall time of `tsdi eval` on the embedded SmolLM2-135M-Instruct pair: 300 prompts x 6 strengths (the bar: < 10 min
on a 2-core CPU machine).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_eval.py [--out out/bench_eval] [-- extra tsdi eval options]

A script rather than a pytest-benchmark file: one run is minutes long and is the measurement. It runs the command
in-process with its defaults (built-in 150 benign + 150 harmful prompts, --auto: a 4-strength grid plus 2
adaptive strengths, greedy, 32 tokens, the bias estimated as `tsdi demo` does) in a fresh output folder (no cached
answers), and reports the wall time, the phases (model load, bias estimate, generation), the CPU time this process
got, and how busy the machine was (load average sampled every 5 s: on a shared machine the same run takes longer
when other jobs compete for the cores). Writes OUT/bench.json beside the command's results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

if __package__:  # python -m benchmarks.<name>
    from .machine import cpu_name
else:  # python benchmarks/<name>.py: this folder is sys.path[0]
    from machine import cpu_name


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every `every` seconds while the benchmark runs."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self._halt = every, [], threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                self.samples.append(os.getloadavg()[0])
            except OSError:
                pass
            self._halt.wait(self.every)

    def stop(self):
        self._halt.set()
        self.join()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/bench_eval"), help="output folder (emptied first)")
    p.add_argument("--keep-cache", action="store_true", help="do not empty the output folder (then it is not a "
                   "measurement of a fresh run)")
    p.add_argument("extra", nargs="*", help="more `tsdi eval` options (after --)")
    args = p.parse_args(argv)

    from tsdi_kernels.cli import eval as cli

    if args.out.exists() and not args.keep_cache:
        shutil.rmtree(args.out)
    eval_argv = ["--out", str(args.out), "--no-progress"] + list(args.extra)
    eval_args = cli.add_arguments(argparse.ArgumentParser(prog="tsdi eval")).parse_args(eval_argv)

    sampler = LoadSampler()
    load_before = os.getloadavg()
    sampler.start()
    t0, cpu0 = time.perf_counter(), os.times()
    status = cli.run(eval_args)
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    sampler.stop()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)

    results = json.loads((args.out / "results.json").read_text(encoding="utf-8"))
    timings = results["timings_s"]
    n_prompts = sum(v["n"] for v in results["prompts"].values())
    n_strengths = len(results["settings"]["strengths"])
    samples = sampler.samples or [float("nan")]
    import torch

    report = {
        "command": "tsdi eval " + " ".join(eval_argv),
        "status": status,
        "prompts": n_prompts,
        "strengths": results["settings"]["strengths"],
        "configurations": n_strengths + 2,
        "answers": n_prompts * (n_strengths + 2),
        "wall_s": round(wall, 1),
        "bar_s": 600,
        "within_bar": wall < 600,
        "phases_s": {"bias_estimate": timings.get("estimate"), "generate_and_score": timings.get("total"),
                     "model_load_and_rest": round(wall - (timings.get("estimate") or 0) - (timings.get("total") or 0),
                                                  1)},
        "model_phases_s": {k: timings.get(k) for k in ("prefill", "generate", "score")},
        "answer_tokens": timings.get("answer_tokens"),
        "process_cpu_s": round(cpu, 1),
        "cpu_share": round(cpu / wall, 2),
        "load_average": {"before": [round(x, 2) for x in load_before], "mean_during": round(sum(samples) / len(samples), 2),
                         "max_during": round(max(samples), 2), "samples": len(sampler.samples)},
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "recommendation": results["recommendation"].get("strength"),
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"\n=== bench_eval: {report['prompts']} prompts x {n_strengths} strengths (+ reference, aligned) = "
          f"{report['answers']} answers")
    print(f"wall {wall:.0f}s (bar 600s: {'met' if wall < 600 else 'NOT met'}); bias estimate "
          f"{report['phases_s']['bias_estimate']}s, generation + scoring {report['phases_s']['generate_and_score']}s, "
          f"model load and the rest {report['phases_s']['model_load_and_rest']}s; inside generation: "
          + ", ".join(f"{k} {v}s" for k, v in report["model_phases_s"].items()))
    print(f"this process used {cpu:.0f} CPU-s = {cpu / wall:.2f} of {os.cpu_count()} cores on average; load "
          f"average during the run: mean {report['load_average']['mean_during']}, max "
          f"{report['load_average']['max_during']} (before: {report['load_average']['before'][0]}); "
          f"{report['machine']}, torch threads {report['torch_threads']}")
    print(f"wrote {args.out / 'bench.json'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
