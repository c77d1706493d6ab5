"""A one-figure training report: loss curves, per-layer gradient norms and the learning
rate (matplotlib, an optional extra: `pip install "fastbp[plot]"`)."""
import os

import numpy as np


def training_report(history, path, title=None):
    """Draw `history` (Trainer.history, a Trainer itself, or a dict of per-epoch lists) to
    an image file: loss and val_loss (with accuracies when recorded), the mean and max
    gradient norm of every layer's weights on a log scale, and the learning rate. Returns
    the path."""
    history = getattr(history, "history", history)         # a Trainer: its history
    if not isinstance(history, dict):
        raise TypeError(f"training_report takes a Trainer or its history (a dict of "
                        f"per-epoch lists); got {type(history).__name__}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("fastbp.plot needs matplotlib: pip install \"fastbp[plot]\"") from None
    if not history or not history.get("loss"):
        raise ValueError("history has no epochs to plot (train first)")
    epochs = np.arange(len(history["loss"]))
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True,
                             gridspec_kw={"height_ratios": [3, 3, 1.4]})
    ax = axes[0]
    ax.plot(epochs, history["loss"], label="loss", color="C0")
    if history.get("val_loss"):
        ax.plot(epochs, history["val_loss"], label="val_loss", color="C1")
    ax.set_ylabel("loss")
    finite = [v for v in history["loss"] if np.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if history.get("accuracy") or history.get("val_accuracy"):
        acc_ax = ax.twinx()
        for key, color in (("accuracy", "C2"), ("val_accuracy", "C3")):
            if history.get(key):
                acc_ax.plot(epochs, history[key], "--", color=color, label=key)
        acc_ax.set_ylabel("accuracy")
        h2, l2 = acc_ax.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize="small")
    ax.set_title(title or "training report")

    ax = axes[1]
    means = np.asarray(history.get("layer_grad_norms") or [], dtype=float)
    maxes = np.asarray(history.get("layer_grad_norms_max") or [], dtype=float)
    if means.size:
        for l in range(means.shape[1]):
            line, = ax.plot(epochs, means[:, l], label=f"layer {l}")
            if maxes.shape == means.shape:
                ax.plot(epochs, maxes[:, l], ":", color=line.get_color(), linewidth=0.8)
        if history.get("grad_norm"):
            ax.plot(epochs, history["grad_norm"], "k-", linewidth=2, label="global")
        ax.set_yscale("log")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_ylabel("weight-gradient L2 norm\n(mean; dotted: max)")

    ax = axes[2]
    if history.get("lr"):
        ax.plot(epochs, history["lr"], color="C4")
    ax.set_ylabel("learning rate")
    ax.set_xlabel("epoch")
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
