"""Static analysis of a Triton kernel's PTX: barriers, the hot loop's barriers, and global-load widths.

PTX analysis (`ptx_stats`, from `kernel.asm["ptx"]`). Every count is of STATIC instructions in the code, not of
executed ones: a barrier inside a conditional block (e.g. the stream kernel's candidate-buffer cut, whose sort
holds most of its barriers) counts once whether or not the block runs, and a loop body counts once whatever its
trip count. Loops are found as the PTX shows them: a backward branch (`@%p bra $L__BBx_y;` to a label earlier in
the code) closes a loop spanning from that label to the last branch back to it.

    barriers       `bar.sync` / `barrier.sync` (and `.red`) in the whole kernel
    loop_barriers  the same inside the hot loop: of the innermost loops that load the kernel's streamed input
                   (STREAMED: the logits, the aligned rows), the one with the most barriers (the stream kernel
                   has one, the fallback kernel one per radix pass kind); kernels without a streamed input: the
                   largest loop that has a global load
    loop_barriers_min / _max  fewest / most barriers on one path through one iteration of the hot loop (over
                   the control-flow graph of its blocks): min skips every conditional block it can (the stream
                   kernel: a greedy row's tile); max takes every one, even blocks that exclude each other at run
                   time (the stream kernel's unfiltered and filtered blocks): an upper bound. None when the hot
                   loop holds an inner loop.
    load_bytes     bytes per thread of the widest global load of the streamed input in the hot loop (vector
                   width x element bytes: `ld.global.v2.b32` = 8), else of any global load there (or in the
                   kernel, without a loop)
    loop_loads     {argument: distinct widths} of the hot loop's global loads; the pointer argument is found by
                   following the address registers back to their `ld.param` (a loaded value ends the walk)
"""
from __future__ import annotations

import re

_INSTR = re.compile(r"^(?:@!?%\w+\s+)?([a-z][\w.]*)\s*(.*?);$")
_REG = re.compile(r"%[A-Za-z]+\d+")
_BAR = re.compile(r"^(?:bar|barrier)(?:\.cta)?\.(?:sync|red)\b")
_LD_WIDTH = re.compile(r"^ld\.global(?:\.[\w:]+)*?(?:\.v(\d+))?\.[bsuf](\d+)$")  # e.g. ld.global.nc.v4.b32


def _operands(text: str) -> list:
    """Top-level comma-separated operands ({...} and [...] kept whole)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch in "{[") - (ch in "}]")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + ([cur.strip()] if cur.strip() else [])


def ptx_stats(ptx: str, arg_names=(), streamed=None) -> dict:
    """Barriers and global-load widths of a PTX kernel (static instructions: see the module docstring).
    arg_names: the kernel's runtime arguments in order (the PTX parameters _param_0, _param_1, ...)."""
    ins, labels = [], {}  # ins: (predicated, opcode, operands); labels: name -> index of the next instruction
    pointers = {int(k) for k in re.findall(r"^\s*\.param\s+\.u64\s+\.ptr\b.*_param_(\d+),?\s*$", ptx, re.M)}
    for line in ptx.splitlines():
        line = line.split("//")[0].strip()
        m_label = re.match(r"^(\$?[\w$]+):$", line)
        if m_label:
            labels[m_label.group(1)] = len(ins)
        elif not line.startswith(".") and (m := _INSTR.match(line)):
            ins.append((line.startswith("@"), m.group(1), _operands(m.group(2))))
    defs = {}  # register -> instructions writing it (a phi's moves write a register more than once)
    for i, (_, op, ops) in enumerate(ins):
        if ops and not ops[0].startswith("[") and not op.startswith(("st.", "bra", "bar", "red.")):
            for reg in _REG.findall(ops[0]):
                defs.setdefault(reg, []).append(i)

    def address_args(i):
        """Arguments a load's address derives from: its registers' definitions walked back to ld.param."""
        seen, todo, found = set(), _REG.findall(ins[i][2][1]), set()
        while todo:
            reg = todo.pop()
            if reg in seen:
                continue
            seen.add(reg)
            for d in defs.get(reg, ()):
                _, op, ops = ins[d]
                param = re.search(r"_param_(\d+)\]", " ".join(ops))
                if op.startswith("ld.param") and param:
                    k = int(param.group(1))
                    if k in pointers:  # integer arguments (strides, offsets) join the address too
                        found.add(arg_names[k] if k < len(arg_names) else f"param_{k}")
                elif not op.startswith(("ld.", "atom.")):  # a loaded value is data, not an address
                    todo += [r for o in ops[1:] for r in _REG.findall(o)]
        return found

    bars = [i for i, (_, op, _) in enumerate(ins) if _BAR.match(op)]
    loads = {}  # instruction index -> (bytes per thread, arguments its address derives from)
    for i, (_, op, ops) in enumerate(ins):
        m_w = _LD_WIDTH.match(op)
        if m_w and len(ops) == 2:
            loads[i] = (int(m_w.group(1) or 1) * int(m_w.group(2)) // 8, address_args(i))
    branches = [(i, labels[ops[-1]]) for i, (_, op, ops) in enumerate(ins)
                if op.startswith("bra") and ops and ops[-1] in labels]
    loops = {}  # loop label index -> index of its last backward branch
    for i, target in branches:
        if target <= i:
            loops[target] = max(loops.get(target, i), i)

    def widths_in(lo, hi, arg=None):
        return [w for j, (w, args) in loads.items() if lo <= j <= hi and (arg is None or arg in args)]

    def n_bars(span):
        return sum(span[0] <= j <= span[1] for j in bars)

    innermost = [sp for sp in loops.items() if not any(sp[0] <= t < i <= sp[1] and (t, i) != sp
                                                        for t, i in loops.items())]
    hot = max((sp for sp in innermost if streamed and widths_in(*sp, streamed)), key=n_bars, default=None)
    if hot is None:
        hot = max((sp for sp in loops.items() if widths_in(*sp)), key=lambda sp: sp[1] - sp[0], default=None)
    out = {"barriers": len(bars), "loop_barriers": None, "loop_barriers_min": None, "loop_barriers_max": None,
           "load_bytes": max((w for w, _ in loads.values()), default=None), "loop_loads": {}}
    if hot is None:
        return out
    lo, hi = hot
    widths = {}
    for j, (w, args) in loads.items():
        if lo <= j <= hi:
            for arg in sorted(args) or ["?"]:
                widths.setdefault(arg, set()).add(w)
    out.update(loop_barriers=sum(lo <= j <= hi for j in bars),
               load_bytes=max(widths_in(lo, hi, streamed) or widths_in(lo, hi)),
               loop_loads={arg: sorted(w) for arg, w in sorted(widths.items())})
    if any(t != lo and lo <= t <= i <= hi for i, t in branches):
        return out  # an inner loop: an iteration has no bounded path
    # Paths through one iteration: blocks of the span in reverse order, each with the fewest / most barriers from
    # its start back to the loop label; edges out of the span (and falling off its end) leave the loop.
    starts = sorted({lo} | {j for j in labels.values() if lo < j <= hi}
                    | {i + 1 for i, (_, op, _) in enumerate(ins) if lo <= i < hi and op.startswith("bra")})
    best = {}
    for b0, b1 in reversed(list(zip(starts, starts[1:] + [hi + 1]))):
        pred, op, ops = ins[b1 - 1]
        succ = [labels[ops[-1]]] if op.startswith("bra") and ops and ops[-1] in labels else []
        if not (op.startswith("bra") and not pred) and not op.startswith(("ret", "exit")):
            succ.append(b1)  # falls through
        tails = [(0, 0) if t == lo else best[t] for t in succ if t == lo or t in best]
        if tails:
            n = sum(b0 <= j < b1 for j in bars)
            best[b0] = (n + min(t[0] for t in tails), n + max(t[1] for t in tails))
    if lo in best:
        out.update(loop_barriers_min=best[lo][0], loop_barriers_max=best[lo][1])
    return out
