"""The embedded mini corpus: synthetic emotional speech in IEMOCAP's own layout.

Generated on the machine from a fixed seed (no download, no licence), so the
default recipe runs the same data prep as the real corpus, as ESPnet's mini_an4
does for AN4. Ten speakers, two per session (an F and an M), so the 10-fold
leave-one-speaker-out protocol runs as on IEMOCAP.

Speech: espeak-ng (:mod:`mtlser.data.espeak`) reads generated sentences, so the
words match the transcript and the phone-class CTC task is learnable. Emotion
is carried by prosody only, through SSML: pitch level, pitch range, rate and
loudness, each with per-utterance jitter, on top of per-speaker voice, pitch,
range and rate (see EMOTION_PROSODY). Afterwards a random gain (+-6 dB) and
white noise (15-30 dB SNR) are added, so loudness alone does not give the
answer. Audio is written as 16 kHz 16-bit mono WAV, like IEMOCAP's sentences.

The layout, with the irregularities the IEMOCAP prep must handle::

    SessionN/dialog/EmoEvaluation/<dialog>.txt       summary + evaluator lines
    SessionN/dialog/transcriptions/<dialog>.txt      TURN [START-END]: words
    SessionN/sentences/wav/<dialog>/<TURN>.wav

- labels beyond the four classes (fru, sur, xxx) that prep must drop, and exc
  that it must merge into hap;
- turns whose words are only ``[LAUGHTER]``/``[BREATHING]`` (kept, no phones);
- transcript lines of no evaluated turn (``..._MXX0``), ``.DS_Store`` files;
- the other speaker's turns inside a dialog named after one speaker
  (``Ses01F_impro01_M003`` is spoken by Ses01M).

Usage:
    python -m mtlser.data.mini_corpus --out downloads/mini_iemocap [--seed 0] \\
        [--sessions 5] [--utts-per-speaker 40]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from mtlser.utils import MtlserError, run_main, setup_logging
from mtlser.utils.fileio import atomic_dir

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000

#: SSML prosody per emotion (pitch %, range, rate %, volume %). Anger and
#: happiness are both raised and loud (as in real speech, they get confused);
#: happiness has the higher, wider pitch, anger the faster rate.
EMOTION_PROSODY = {
    "ang": (20, "high", 140, 160),
    "hap": (45, "x-high", 115, 125),
    "sad": (-30, "x-low", 70, 55),
    "neu": (0, "medium", 100, 100),
}
#: How often each label is drawn (IEMOCAP-like proportions, plus labels prep drops).
LABEL_WEIGHTS = {"ang": 0.19, "hap": 0.11, "exc": 0.17, "sad": 0.19, "neu": 0.28, "fru": 0.03, "sur": 0.015, "xxx": 0.015}
#: What a dropped label sounds like (its audio exists, prep must skip it).
DROPPED_SOUND = {"fru": "ang", "sur": "hap", "xxx": "neu"}

FEMALE_VOICES = ["en+f1", "en+f2", "en+f3", "en+f4", "en+f5"]
MALE_VOICES = ["en+m1", "en+m2", "en+m3", "en+m4", "en+m5"]
DIALOG_NAMES = ["{s}F_impro01", "{s}M_impro05a", "{s}F_script01_1", "{s}M_script02_2b"]

_WORDS = {
    "subj": ["I", "we", "you", "they", "she", "he", "my brother", "the neighbors", "your friend", "nobody"],
    "verb": ["found", "lost", "wanted", "finished", "painted", "bought", "forgot", "fixed", "visited", "cleaned",
             "opened", "missed", "carried", "noticed", "promised"],
    "inf": ["call", "find", "leave", "remember", "change", "sell", "keep", "move", "check", "bring"],
    "adj": ["little", "green", "broken", "famous", "quiet", "heavy", "ancient", "yellow", "simple", "strange"],
    "noun": ["letter", "garden", "kitchen", "ticket", "window", "jacket", "bicycle", "photograph", "train",
             "village", "basket", "doctor", "river", "office", "message"],
    "time": ["yesterday", "this morning", "last summer", "again", "on Monday", "at night", "before dinner", "today"],
    "place": ["at the station", "in the park", "near the bridge", "by the door", "on the table", "downstairs"],
}
_TEMPLATES = [
    "{subj} {verb} the {adj} {noun} {time}",
    "{subj} {verb} a {noun} {place}",
    "why did {subj} {inf} the {noun}",
    "we should {inf} the {adj} {noun} {time}",
    "the {noun} is {adj} {place}",
    "{subj} never {verb} that {noun}",
    "please {inf} my {noun}",
    "did {subj} really {inf} the {adj} {noun} {place}",
    "it was a {adj} {noun}",
    "{subj} {verb} it {time}",
]
_NONVERBAL = [("[LAUGHTER]", "ha ha ha"), ("[BREATHING]", "hmm"), ("[LAUGHTER] [BREATHING]", "ha ha")]


@dataclass
class Speaker:
    id: str  # e.g. Ses01F
    voice: str
    pitch: int  # espeak base pitch 0-100
    range: int  # espeak base range 0-100
    rate: int  # words per minute


def make_speakers(n_sessions: int, rng: np.random.Generator) -> list[Speaker]:
    speakers = []
    for s in range(1, n_sessions + 1):
        for gender, voices, pitch_lo in (("F", FEMALE_VOICES, 55), ("M", MALE_VOICES, 28)):
            speakers.append(Speaker(
                id=f"Ses{s:02d}{gender}",
                voice=voices[(s - 1) % len(voices)],
                pitch=int(rng.integers(pitch_lo, pitch_lo + 16)),
                range=int(rng.integers(40, 61)),
                rate=int(rng.integers(150, 191)),
            ))
    return speakers


def make_sentence(rng: np.random.Generator) -> str:
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    words = {k: v[int(rng.integers(len(v)))] for k, v in _WORDS.items()}
    text = template.format(**words)
    return text[0].upper() + text[1:] + ("?" if template.startswith(("why", "did")) else ".")


def ssml(text: str, emotion: str, rng: np.random.Generator) -> str:
    pitch, range_, rate, volume = EMOTION_PROSODY[emotion]
    pitch += rng.normal(0, 6)
    rate *= np.exp(rng.normal(0, 0.07))
    volume *= np.exp(rng.normal(0, 0.12))
    return (
        f'<speak><prosody pitch="{pitch:+.0f}%" range="{range_}" rate="{rate:.0f}%" '
        f'volume="{volume:.0f}%">{text}</prosody></speak>'
    )


def postprocess(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Resample to 16 kHz, pad with silence, random gain, white noise; float32 in [-1, 1]."""
    from scipy.signal import resample_poly

    y = x.astype(np.float64) / 32768.0
    if sr != SAMPLE_RATE:
        g = np.gcd(sr, SAMPLE_RATE)
        y = resample_poly(y, SAMPLE_RATE // g, sr // g)
    lead, trail = (int(rng.uniform(0.05, 0.25) * SAMPLE_RATE) for _ in range(2))
    y = np.concatenate([np.zeros(lead), y, np.zeros(trail)])
    y *= 10 ** (rng.uniform(-6, 6) / 20)
    power = np.mean(y**2) + 1e-12
    snr_db = rng.uniform(15, 30)
    y += rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), size=y.shape)
    peak = np.max(np.abs(y))
    if peak > 0.99:
        y *= 0.99 / peak
    return y.astype(np.float32)


def emo_eval_block(start: float, end: float, turn: str, label: str, rng: np.random.Generator) -> str:
    names = {"ang": "Anger", "hap": "Happiness", "exc": "Excited", "sad": "Sadness", "neu": "Neutral state",
             "fru": "Frustration", "sur": "Surprise", "xxx": "Other"}
    vad = ", ".join(f"{v:.4f}" for v in rng.uniform(1.5, 4.5, size=3))
    lines = [f"[{start:.4f} - {end:.4f}]\t{turn}\t{label}\t[{vad}]"]
    for ev in ("C-E1", "C-E2", "C-E4"):
        lines.append(f"{ev}:\t{names[label]};\t()")
    lines.append(f"A-E3:\tval {rng.integers(1, 6)}; act {rng.integers(1, 6)}; dom  {rng.integers(1, 6)};\t()")
    return "\n".join(lines) + "\n\n"


def generate(out: str | Path, seed: int = 0, n_sessions: int = 5, utts_per_speaker: int = 40) -> dict:
    """Write the corpus under ``out`` (atomically); returns a summary dict.

    Idempotent: when ``out`` already holds a corpus made with the same settings, nothing is done.
    """
    from mtlser.data.espeak import Espeak

    out = Path(out)
    marker = out / "README.mtlser.json"
    if marker.is_file():
        old = json.loads(marker.read_text())
        if (old.get("seed"), old.get("sessions"), old.get("utts_per_speaker")) == (seed, n_sessions, utts_per_speaker):
            logger.info("mini corpus already in %s (seed %d); not regenerated", out, seed)
            return old
        logger.info("mini corpus in %s was made with other settings; regenerating", out)
    if not 1 <= n_sessions <= 5:
        raise MtlserError(f"--sessions {n_sessions}: IEMOCAP's layout has 1 to 5 sessions")
    rng = np.random.default_rng(seed)
    engine = Espeak()
    speakers = make_speakers(n_sessions, rng)
    labels = list(LABEL_WEIGHTS)
    weights = np.array([LABEL_WEIGHTS[k] for k in labels])
    weights /= weights.sum()
    counts: dict[str, int] = {k: 0 for k in labels}
    total_dur = 0.0
    with atomic_dir(out) as tmp:
        for s in range(1, n_sessions + 1):
            sess = f"Ses{s:02d}"
            spk = {sp.id[-1]: sp for sp in speakers if sp.id.startswith(sess)}
            dialogs = [d.format(s=sess) for d in DIALOG_NAMES]
            # Turns per (dialog, gender): split each speaker's utterances over the dialogs.
            plan = []
            for gender in ("F", "M"):
                for i in range(utts_per_speaker):
                    plan.append((dialogs[i % len(dialogs)], gender))
            root = tmp / f"Session{s}"
            for sub in ("dialog/EmoEvaluation", "dialog/transcriptions", "dialog/wav"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            # Stray files as found in the real release.
            (root / "dialog/EmoEvaluation/Categorical").mkdir()
            (root / "dialog/EmoEvaluation/Categorical/README").write_text("not a summary file\n")
            for dialog in dialogs:
                wav_dir = root / "sentences/wav" / dialog
                wav_dir.mkdir(parents=True, exist_ok=True)
                (wav_dir / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
                emo_lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"]
                trans_lines = []
                t = float(rng.uniform(1, 5))
                n_by_gender = {"F": 0, "M": 0}
                for d, gender in plan:
                    if d != dialog:
                        continue
                    turn = f"{dialog}_{gender}{n_by_gender[gender]:03d}"
                    n_by_gender[gender] += 1
                    label = labels[int(rng.choice(len(labels), p=weights))]
                    counts[label] += 1
                    if rng.random() < 0.03:
                        words, spoken = _NONVERBAL[int(rng.integers(len(_NONVERBAL)))]
                    else:
                        words = make_sentence(rng)
                        spoken = words
                    sp = spk[gender]
                    emotion = {"exc": "hap"}.get(label, DROPPED_SOUND.get(label, label))
                    raw = engine.synth(ssml(spoken, emotion, rng), voice=sp.voice, pitch=sp.pitch,
                                       range_=sp.range, rate=sp.rate)
                    audio = postprocess(raw, engine.sample_rate, rng)
                    sf.write(wav_dir / f"{turn}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
                    dur = len(audio) / SAMPLE_RATE
                    total_dur += dur
                    emo_lines.append(emo_eval_block(t, t + dur, turn, label, rng))
                    trans_lines.append(f"{turn} [{t:08.4f}-{t + dur:08.4f}]: {words}\n")
                    t += dur + float(rng.uniform(0.3, 2.0))
                # A line of no evaluated turn, as IEMOCAP has.
                trans_lines.append(f"{dialog}_MXX0 [{t:08.4f}-{t + 1:08.4f}]: Mm-hmm.\n")
                (root / "dialog/EmoEvaluation" / f"{dialog}.txt").write_text("".join(emo_lines))
                (root / "dialog/transcriptions" / f"{dialog}.txt").write_text("".join(trans_lines))
        summary = {
            "seed": seed,
            "sessions": n_sessions,
            "utts_per_speaker": utts_per_speaker,
            "speakers": [asdict(sp) for sp in speakers],
            "label_counts": counts,
            "hours": round(total_dur / 3600, 4),
        }
        (tmp / "README.mtlser.json").write_text(json.dumps(summary, indent=1) + "\n")
    logger.info("mini corpus in %s: %d utterances, %.1f min, labels %s",
                out, sum(counts.values()), total_dur / 60, counts)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the embedded mini corpus (IEMOCAP layout).")
    parser.add_argument("--out", required=True, help="corpus root to create (like IEMOCAP_full_release)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sessions", type=int, default=5, help="2 speakers per session (default 5: 10 speakers)")
    parser.add_argument("--utts-per-speaker", type=int, default=40)
    args = parser.parse_args(argv)
    setup_logging()
    generate(args.out, args.seed, args.sessions, args.utts_per_speaker)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
