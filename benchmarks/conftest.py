"""Shared benchmark conventions: ratio table at the end of the session.

Each comparison is one pytest-benchmark group (``benchmark.group = "debias_sample B8 V128256 fp32"``) holding one
benchmark with ``benchmark.extra_info["role"] = "baseline"`` and one or more with ``"candidate"``. At the end of
the session this prints, per group, the median time of each and the speed-up (baseline median / candidate
median), measured in the same run. Optional extra_info["bytes"] adds the candidate's effective GB/s, optional
extra_info["threads"] the torch thread count the benchmark set (printed in the header).
Run with ``--benchmark-enable`` (pyproject's addopts disable benchmarks for the test suite).
"""
import os
import platform

import torch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_s(bench) -> float:
    stats = bench.stats
    stats = getattr(stats, "stats", stats)  # pytest-benchmark wraps Stats in Metadata
    return float(stats.median)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benches = [b for b in getattr(session, "benchmarks", []) or [] if getattr(b, "stats", None) is not None]
    if not benches:
        return
    groups = {}
    for b in benches:
        role = (b.extra_info or {}).get("role")
        if role in ("baseline", "candidate"):
            groups.setdefault(b.group or b.name, []).append(b)
    rows = []
    for group, members in groups.items():
        base = [b for b in members if b.extra_info["role"] == "baseline"]
        if not base:
            continue
        t_base = _median_s(base[0])
        for cand in (b for b in members if b.extra_info["role"] == "candidate"):
            t = _median_s(cand)
            nbytes = cand.extra_info.get("bytes")
            gbs = f"{nbytes / t / 1e9:7.2f}" if nbytes else "      -"
            rows.append((group, cand.name.split("[")[0], t_base * 1e3, t * 1e3, gbs, t_base / t))
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("=", "speed-up over baseline (median times, same run)")
    threads = sorted({str(b.extra_info.get("threads", "?")) for m in groups.values() for b in m})
    tr.write_line(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                  f"torch threads during the benchmarks: {', '.join(threads)}")
    width = max(len(r[0]) for r in rows)
    tr.write_line(f"{'group':<{width}}  {'candidate':<28} {'baseline ms':>11} {'candidate ms':>12} {'GB/s':>7} "
                  f"{'speed-up':>8}")
    for group, name, tb, tc, gbs, ratio in rows:
        tr.write_line(f"{group:<{width}}  {name:<28} {tb:11.3f} {tc:12.3f} {gbs} {ratio:7.1f}x")
