"""Shared benchmark conventions: ratio table at the end of the session.

Each comparison is one pytest-benchmark group (``benchmark.group = "debias_sample B8 V128256 fp32"``) holding one
benchmark with ``benchmark.extra_info["role"] = "baseline"`` and one or more with ``"candidate"``. At the end of
the session this prints, per group, the median time of each and the speed-up (baseline median / candidate
median), measured in the same run. Optional extra_info["bytes"] adds the candidate's effective GB/s, optional
extra_info["threads"] the torch thread count the benchmark set (printed in the header).
Groups whose baseline sets extra_info["report"] = "cost" are costs relative to a cheap reference operation (e.g.
host overhead per call against torch.sub): they get their own table, each candidate's median and its cost in
multiples of the baseline ("x baseline", the inverse of a speed-up), with optional extra_info["bar"] (the largest
acceptable multiple) and whether it is met.
Run with ``--benchmark-enable`` (pyproject's addopts disable benchmarks for the test suite).
"""
import os

import torch

from benchmarks.machine import cpu_name


def _median_s(bench) -> float:
    stats = bench.stats
    stats = getattr(stats, "stats", stats)  # pytest-benchmark wraps Stats in Metadata
    return float(stats.median)


def _load() -> str:
    """The 1, 5 and 15 minute load averages: how busy the (shared) machine was."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


_LOAD_AT_START = {}


def pytest_sessionstart(session):
    _LOAD_AT_START["load"] = _load()


def _write_machine(tr, groups) -> None:
    threads = sorted({str(b.extra_info.get("threads", "?")) for m in groups.values() for b in m})
    tr.write_line(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                  f"torch threads during the benchmarks: {', '.join(threads)}")
    tr.write_line(f"load average (1, 5, 15 min): {_LOAD_AT_START.get('load', '?')} at the start, {_load()} at the end")


def _write_costs(tr, groups, costs) -> None:
    tr.write_sep("=", "cost relative to the baseline operation (median times, same run)")
    _write_machine(tr, groups)
    for group, base, cands in costs:
        t_base = _median_s(base)
        tr.write_line(f"{group}: baseline {base.extra_info.get('label', base.name)} {t_base * 1e6:.2f} us")
        width = max([len(c.extra_info.get("label", c.name)) for c in cands] + [9])
        tr.write_line(f"  {'candidate':<{width}} {'median us':>10} {'x baseline':>10} {'bar':>6}  verdict")
        for cand in sorted(cands, key=_median_s):
            t = _median_s(cand)
            bar = cand.extra_info.get("bar")
            verdict = "-" if bar is None else ("within" if t / t_base <= bar else "OVER")
            tr.write_line(f"  {cand.extra_info.get('label', cand.name):<{width}} {t * 1e6:10.2f} {t / t_base:9.1f}x "
                          f"{(f'{bar}x' if bar else '-'):>6}  {verdict}")


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
    rows, costs = [], []
    for group, members in groups.items():
        base = [b for b in members if b.extra_info["role"] == "baseline"]
        if not base:
            continue
        if base[0].extra_info.get("report") == "cost":
            costs.append((group, base[0], [b for b in members if b.extra_info["role"] == "candidate"]))
            continue
        t_base = _median_s(base[0])
        for cand in (b for b in members if b.extra_info["role"] == "candidate"):
            t = _median_s(cand)
            nbytes = cand.extra_info.get("bytes")
            gbs = f"{nbytes / t / 1e9:7.2f}" if nbytes else "      -"
            rows.append((group, cand.name.split("[")[0], t_base * 1e3, t * 1e3, gbs, t_base / t))
    tr = terminalreporter
    if costs:
        _write_costs(tr, groups, costs)
    if not rows:
        return
    tr.write_sep("=", "speed-up over baseline (median times, same run)")
    _write_machine(tr, groups)
    width = max(len(r[0]) for r in rows)
    tr.write_line(f"{'group':<{width}}  {'candidate':<28} {'baseline ms':>11} {'candidate ms':>12} {'GB/s':>7} "
                  f"{'speed-up':>8}")
    for group, name, tb, tc, gbs, ratio in rows:
        tr.write_line(f"{group:<{width}}  {name:<28} {tb:11.3f} {tc:12.3f} {gbs} {ratio:7.1f}x")
