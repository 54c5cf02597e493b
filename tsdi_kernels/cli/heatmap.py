"""`tsdi inspect --plot`: the bias of the tokens that matter as a heatmap (tokens x answer positions)."""
from __future__ import annotations

from . import common


def token_label(text, token_id: int) -> str:
    """The token's text quoted (a leading space shows: ' I' vs 'I'), or its id without a tokenizer."""
    return repr(text) if text is not None else f"#{token_id}"


def plot_heatmap(table, path: str, *, tokenizer=None, top: int = 5, positions: int = 16, by: str = "moved",
                  probes=()) -> None:
    """Heatmap [token, answer position] of the bias (diverging colours centred at 0, labelled colour bar) of the
    tokens that rank in the `top` at some position (both directions), then the probe words; above it, the share
    of the probability debiasing moves at each position for a few strengths (when the table records it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
        from matplotlib.colors import CenteredNorm
    except ImportError:
        raise common.UsageError("--plot needs matplotlib (pip install matplotlib)") from None
    common.check_output("--plot", path)
    ids, seen = [], set()
    for largest in (True, False):  # taken from (over-preferred), then given to
        for t in range(positions):
            for row in table.ranked_tokens(t, top, tokenizer, by=by, largest=largest):
                if row.token_id not in seen and len(ids) < 40:  # beyond that the labels are unreadable
                    seen.add(row.token_id)
                    ids.append(row.token_id)
    ranked = len(ids)
    probe_ids = [tid for _, tid in probes if tid not in seen]
    ids += probe_ids
    values = table.mean[:positions, ids].float().cpu().T.numpy()
    # token text quoted (spaces show), then its id
    labels = [f"{token_label(tokenizer.decode([i]), i)[:20]}  #{i}" if tokenizer is not None else f"#{i}"
              for i in ids]
    moved = by == "moved" and table.aligned_logprob is not None
    height = 1.6 + 0.3 * len(ids) + (1.6 if moved else 0.0)
    fig = plt.figure(figsize=(max(6.5, 3.0 + 0.75 * positions), height))
    grid = fig.add_gridspec(2 if moved else 1, 2, width_ratios=(40, 1),
                            height_ratios=((1.6, 0.3 * len(ids) + 1.0) if moved else None))
    ax = fig.add_subplot(grid[-1, 0])
    cax = fig.add_subplot(grid[-1, 1])
    image = ax.imshow(values, aspect="auto", cmap="RdBu_r", norm=CenteredNorm(vcenter=0.0),
                      interpolation="nearest")
    if len(ids) * positions <= 800:  # the value in every cell, when they fit
        limit = float(abs(values).max()) or 1.0
        for r in range(len(ids)):
            for c in range(positions):
                v = values[r, c]
                ax.text(c, r, f"{v:+.1f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * limit else "black")
    if probe_ids:
        ax.axhline(ranked - 0.5, color="black", linewidth=1.2)
    ax.set_xticks(range(positions))
    ax.set_yticks(range(len(ids)), labels=labels, fontsize=8, family="monospace")
    ax.set_xlabel("answer position t")
    ax.set_ylabel("token" + (" (below the line: refusal / compliance openers)" if probe_ids else ""))
    kind = "log-prob" if table.normalize else "logit"
    what = ("tokens debiasing takes the most probability from, then gives the most to" if by == "moved"
            else "tokens with the largest |bias|")
    ax.set_title(f"TSDI bias: {what}", fontsize=10)
    fig.colorbar(image, cax=cax, label=f"bias = mean {kind} difference, aligned - reference\n"
                 "(red: the aligned model prefers it; debiasing lowers it)")
    if moved:
        top_ax = fig.add_subplot(grid[0, 0], sharex=ax)
        for strength in (0.5, 1.0, 1.5):
            top_ax.plot(range(positions), [100 * table.total_variation(t, strength) for t in range(positions)],
                        marker="o", label=f"strength {strength:g}")
        top_ax.set_ylabel("probability\nmoved (%)")
        top_ax.set_ylim(bottom=0)
        top_ax.grid(alpha=0.3)
        top_ax.legend(fontsize=7, loc="upper right")
        top_ax.tick_params(labelbottom=False)
        top_ax.set_title("share of the aligned model's mean distribution that debiasing moves, per position",
                         fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
