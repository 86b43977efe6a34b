"""Learning curves as PNG (matplotlib, headless)."""
from __future__ import annotations

import math
import os


def smooth(values, window: int):
    """Trailing moving average (NaNs ignored), same length as ``values``."""
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        good = [a for a in acc if not math.isnan(a)]
        out.append(sum(good) / len(good) if good else float("nan"))
    return out


def plot_history(history, evals, path, title="reward model", extra=None) -> str:
    """Two panels: training loss, and training / held-out accuracy against the optimizer step.

    history: [{"step", "loss", "accuracy"}]; evals: [{"step", "accuracy"}]; extra: {label: evals-like list}
    of further held-out curves (e.g. out-of-domain). Writes ``path`` atomically and returns it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    window = max(1, len(history) // 20)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(steps, [h["loss"] for h in history], color="0.8", lw=0.8, label="per step")
    ax_loss.plot(steps, smooth([h["loss"] for h in history], window), color="C0", label=f"mean of {window}")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend()
    ax_acc.plot(steps, smooth([h["accuracy"] for h in history], window), color="C0", label="training (batch)")
    curves = {"held-out": evals, **(extra or {})}
    for k, (label, points) in enumerate(curves.items()):
        if points:
            ax_acc.plot([e["step"] for e in points], [e["accuracy"] for e in points], "o-", color=f"C{k + 1}",
                        label=label)
    ax_acc.axhline(0.5, color="0.6", ls=":", lw=0.8)
    ax_acc.set_ylim(0, 1)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("pairwise accuracy")
    ax_acc.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
