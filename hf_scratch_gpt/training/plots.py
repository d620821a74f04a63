"""Loss curves: training and validation loss against optimizer steps and against tokens seen."""

from __future__ import annotations

from pathlib import Path


def plot_loss_curves(
    history: list[dict],
    path: str | Path,
    title: str = "ScratchGPT training",
    validation_label: str = "validation loss",
) -> Path:
    """Write a PNG with two panels (x = step, x = tokens seen) of `loss` and `eval_loss` from `history`.

    `history` rows are log records with `step`, `tokens` and `loss` and/or `eval_loss`. `validation_label` names
    the validation curve; callers say there how it was measured (e.g. on 128-token blocks).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    curves = {"loss": "train loss", "eval_loss": validation_label}
    series = {key: [row for row in history if key in row] for key in curves}
    if not any(series.values()):
        raise ValueError("history has no 'loss' or 'eval_loss' record to plot")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, x_key, x_label in ((axes[0], "step", "optimizer step"), (axes[1], "tokens", "tokens seen")):
        for key, label in curves.items():
            rows = series[key]
            if rows:
                axis.plot([row[x_key] for row in rows], [row[key] for row in rows], marker="." if len(rows) < 30 else None, label=label)
        axis.set_xlabel(x_label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy (nats/token)")
    axes[0].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
