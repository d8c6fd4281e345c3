"""What a user watches while a fold trains: ``train_curves.png`` and TensorBoard scalars.

Both are written after every epoch from the trainer's history records (one dict
per epoch: ``epoch``, ``train_loss_ce``, ``train_loss_ctc``, ``train_acc``,
``valid_loss``, ``valid_wa``, ``valid_ua``, ...), so a run can be followed while
it trains and a killed run leaves curves up to its last finished epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mtlser.utils.fileio import atomic_open

logger = logging.getLogger(__name__)


def _series(history: list[dict], key: str) -> list[float]:
    return [float(h[key]) if isinstance(h.get(key), (int, float)) else np.nan for h in history]


def _has(history: list[dict], key: str) -> bool:
    return any(isinstance(h.get(key), (int, float)) for h in history)


def plot_curves(history: list[dict], path: Path, title: str, reported_epoch: int | None = None,
                reported_how: str = "") -> None:
    """Three panels over epochs: cross entropy, CTC loss, accuracy; the reported epoch marked in each.

    ``reported_how`` says how that epoch was chosen (e.g. "best valid UA", "last epoch").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not history:
        return
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    line = dict(marker="o", ms=3, lw=1.2)

    ax = axes[0]
    if not _has(history, "train_loss_ce") and _has(history, "train_loss_attr"):  # a class-free model
        ax.plot(ep, _series(history, "train_loss_attr"), label="train", **line)
        if _has(history, "valid_loss_attr"):
            ax.plot(ep, _series(history, "valid_loss_attr"), label="valid", **line)
        ax.set_title("attributes: L_attr (no classes)", fontsize=10)
        ax.set_ylabel("L_attr (before × attr_weight)")
    else:
        ax.plot(ep, _series(history, "train_loss_ce"), label="train", **line)
        if _has(history, "valid_loss_ce"):
            ax.plot(ep, _series(history, "valid_loss_ce"), label="valid", **line)
        ax.set_title("emotion: cross entropy", fontsize=10)
        ax.set_ylabel("CE per utterance")

    ax = axes[1]
    if _has(history, "train_loss_ctc"):
        ax.plot(ep, _series(history, "train_loss_ctc"), label="train", **line)
        if _has(history, "valid_loss_ctc"):
            ax.plot(ep, _series(history, "valid_loss_ctc"), label="valid", **line)
    else:
        ax.text(0.5, 0.5, "no CTC head (λ = 0)", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_title("auxiliary task: CTC loss (before × λ)", fontsize=10)
    ax.set_ylabel("CTC loss (reduction as in the title)")

    ax = axes[2]
    ax.plot(ep, _series(history, "train_acc"), label="train accuracy (during the epoch)", color="0.5", ls=":",
            **line)
    if _has(history, "valid_ua"):
        ax.plot(ep, _series(history, "valid_wa"), label="valid WA", **line)
        ax.plot(ep, _series(history, "valid_ua"), label="valid UA", **line)
    elif not _has(history, "valid_loss"):
        ax.text(0.5, 0.08, "no valid set (model_selection last)", ha="center", va="bottom",
                transform=ax.transAxes, color="0.4")
    ax.set_ylim(0, 1.02)
    ax.set_title("emotion accuracy", fontsize=10)
    ax.set_ylabel("accuracy (WA, UA)")
    if _has(history, "valid_ccc"):  # an attribute head (train.select_metric ccc selects on it); CCC may be < 0
        ax.plot(ep, _series(history, "valid_ccc"), label="valid mean CCC (attributes)", **line)
        ax.set_ylim(min(0.0, float(np.nanmin(_series(history, "valid_ccc"))) - 0.02), 1.02)
        ax.set_title("emotion accuracy, attribute CCC", fontsize=10)
        ax.set_ylabel("accuracy (WA, UA), CCC")

    for ax in axes:
        if reported_epoch is not None:
            ax.axvline(reported_epoch, color="tab:red", ls="--", lw=1,
                       label=f"reported: epoch {reported_epoch}" + (f" ({reported_how})" if reported_how else ""))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


class TensorBoardLog:
    """Per-epoch scalars under ``log_dir`` (one event file per run; a resumed run hides the epochs it redoes)."""

    def __init__(self, log_dir: Path, first_epoch: int):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # a standard dependency (tools/requirements.txt); training goes on without it
            logger.warning("TensorBoard scalars not written (%s); pip install tensorboard, or set "
                           "train.tensorboard false", e)
            return
        # purge_step: events of epochs >= first_epoch from an earlier, killed run are dropped.
        self.writer = SummaryWriter(str(log_dir), purge_step=first_epoch)

    def epoch(self, record: dict, learning_rates: dict[str, float]) -> None:
        if self.writer is None:
            return
        step = int(record["epoch"])
        for key, value in record.items():
            if key in ("epoch", "step") or not isinstance(value, (int, float)):
                continue
            split, _, name = key.partition("_")  # train_loss_ce -> train/loss_ce
            self.writer.add_scalar(f"{split}/{name}" if name else key, float(value), step)
        for group, lr in learning_rates.items():
            self.writer.add_scalar(f"lr/{group}", lr, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
