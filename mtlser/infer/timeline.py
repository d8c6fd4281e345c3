"""An emotion timeline of a long recording: its windows as a CSV and a picture.

``mtlser-infer --timeline DIR`` writes, for every recording labelled in more than one window
(longer than ``--window``), ``DIR/<name>.csv`` and ``DIR/<name>.png``, the name being the id's
last path component (a file's name, a wav.scp key) with anything but letters, digits, ``.``,
``-`` and ``_`` replaced by ``_`` (and ``_2``, ``_3``... added where two recordings share one):

    start,end,emotion,p_<emotion>...       one row per window, seconds, in time order

The picture has time on the x-axis and one probability curve per emotion (each window's
probabilities at its centre), with a band underneath coloured by the label in force: each
window rules from halfway after its predecessor's centre to halfway before its successor's; a run
of one label wider than 6 % of the recording is named in the band.
matplotlib draws it (``pip install 'mtlser[recipe]'`` or ``pip install matplotlib``).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_dir, atomic_open, atomic_write_text

logger = logging.getLogger(__name__)


def file_stem(recording_id: str) -> str:
    """A recording id as a file name (its last path component, no odd characters)."""
    name = recording_id.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "recording"


def timeline_csv(windows: list[dict], emotions: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["start", "end", "emotion", *[f"p_{e}" for e in emotions]])
    for win in windows:
        w.writerow([f"{win['start']:.3f}", f"{win['end']:.3f}", win["emotion"],
                    *[f"{win['probs'][e]:.6f}" for e in emotions]])
    return buf.getvalue()


def label_spans(windows: list[dict], duration: float) -> list[tuple[float, float, str]]:
    """(start, end, emotion) of the label band: each window rules between the midpoints to its neighbours."""
    centres = [(w["start"] + w["end"]) / 2 for w in windows]
    cuts = [0.0] + [(a + b) / 2 for a, b in zip(centres, centres[1:])] + [duration]
    return [(cuts[i], cuts[i + 1], w["emotion"]) for i, w in enumerate(windows)]


def draw(path: Path, recording_id: str, windows: list[dict], emotions: list[str], duration: float) -> None:
    try:
        import matplotlib
    except ImportError:
        raise MtlserError("--timeline draws with matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {e: plt.get_cmap("tab10")(i % 10) for i, e in enumerate(emotions)}
    minutes = duration > 300
    scale = 60.0 if minutes else 1.0
    centres = [(w["start"] + w["end"]) / 2 / scale for w in windows]
    fig, (ax, band) = plt.subplots(2, 1, figsize=(11, 4.2), sharex=True,
                                   gridspec_kw={"height_ratios": [5, 1], "hspace": 0.08})
    for e in emotions:
        ax.plot(centres, [w["probs"][e] for w in windows], color=colours[e], label=e, lw=1.4,
                marker="o" if len(windows) <= 60 else None, ms=3)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.set_title(f"{recording_id}: {len(windows)} windows", fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    # Above the axes, right of the title: inside, it hid the curves where probabilities are high.
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(emotions), fontsize=8, frameon=False,
              borderaxespad=0.2)
    runs: list[list] = []  # consecutive spans of one label, merged: the band names each wide enough run
    for a, b, e in label_spans(windows, duration):
        band.axvspan(a / scale, b / scale, color=colours[e], lw=0)
        if runs and runs[-1][2] == e:
            runs[-1][1] = b
        else:
            runs.append([a, b, e])
    for a, b, e in runs:
        if b - a >= 0.06 * duration:
            band.text((a + b) / 2 / scale, 0.5, e, ha="center", va="center", fontsize=8, color="white",
                      fontweight="bold", transform=band.get_xaxis_transform())
    band.set_yticks([])
    band.set_ylabel("label", rotation=0, ha="right", va="center")
    band.set_xlim(0, duration / scale)
    band.set_xlabel("time (min)" if minutes else "time (s)")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.13)
    with atomic_open(path, "wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_timelines(done: list, emotions: list[str], out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """CSV + PNG for every labelled recording with windows (see the module doc); returns the CSVs written.
    ``out_dir`` is written as a whole (:func:`mtlser.utils.fileio.atomic_dir`), when there is a timeline."""
    out_dir = Path(out_dir)
    items, used = [], set()
    for d in done:
        if d.error is not None or "windows" not in (d.result or {}):
            continue
        stem = file_stem(d.recording.id)
        n = 1
        while stem in used:  # two ids that map to one name
            n += 1
            stem = f"{file_stem(d.recording.id)}_{n}"
        used.add(stem)
        items.append((stem, d))
    if items:
        with atomic_dir(out_dir, overwrite, "--timeline") as tmp:
            for stem, d in items:
                windows = d.result["windows"]
                atomic_write_text(tmp / f"{stem}.csv", timeline_csv(windows, emotions))
                draw(tmp / f"{stem}.png", d.recording.id, windows, emotions, d.duration or windows[-1]["end"])
    written = [out_dir / f"{stem}.csv" for stem, _ in items]
    logger.info("timelines of %d recordings in %s", len(written), out_dir)
    return written
