"""Small CREMA-D and RAVDESS copies in their release layouts, with the traps of real copies.

The audio is a tone with noise (no speech); what matters here is the layout, the
file names, the sample rates and the files a prep must not take for clips:

CREMA-D: AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav (16 kHz mono), an MP3
twin of every clip in AudioMP3/, VideoDemographics.csv, and in AudioWAV/ a
.DS_Store, a ._ AppleDouble copy and a stray notes file.

RAVDESS: Audio_Speech_Actors_01-24/Actor_AA/03-01-*.wav (48 kHz, one of them
stereo), the song audio (03-02-*), video files (01-01-*.mp4, 02-01-*.mp4),
.DS_Store and ._ files; optionally a doubled tree (every clip twice, as some redistributions hold it).

Used by the prep tests, and to measure what a recipe costs on a mini-size copy:
    python -m tests.corpus_layouts crema_d /tmp/crema --actors 10 --clips-per-actor 40
    python -m tests.corpus_layouts ravdess /tmp/ravdess --actors 6 --clips-per-actor 60
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mtlser.corpora import crema_d, ravdess
from tests.conftest import write_wav

#: Mean clip durations of the releases (the lengths listed in EmoBox's metadata of the full releases:
#: 18,924 s / 7,442 clips and 5,329 s / 1,440); fixture clips are drawn within +-20 % of them.
MEAN_SECONDS = {"crema_d": 2.54, "ravdess": 3.70}


def _seconds(rng: np.random.Generator, corpus: str, scale: float) -> float:
    return float(MEAN_SECONDS[corpus] * scale * rng.uniform(0.8, 1.2))


def crema_d_names(actor: str, n: int) -> list[str]:
    """n distinct clip names of one actor, every emotion early on (IEO with LO/MD/HI, XX elsewhere)."""
    names = []
    codes = list(crema_d.EMOTION_CODES)
    for i in range(n):
        emotion = codes[i % len(codes)]
        sentence = list(crema_d.SENTENCES)[(i // len(codes) + int(actor) - 1001) % len(crema_d.SENTENCES)]
        level = "XX" if sentence != "IEO" or emotion == "NEU" else ("LO", "MD", "HI")[(int(actor) - 1001) % 3]
        names.append(f"{actor}_{sentence}_{emotion}_{level}.wav")
    assert len(set(names)) == n, "at most 72 clips per actor"
    return names


def make_crema_d(root: Path, actors: int = 3, clips_per_actor: int = 8, seed: int = 0, duration_scale: float = 1.0,
                 traps: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    wav_dir = root / "AudioWAV"
    ids = [str(1001 + a) for a in range(actors)]
    for a, actor in enumerate(ids):
        for i, name in enumerate(crema_d_names(actor, clips_per_actor)):
            write_wav(wav_dir / name, _seconds(rng, "crema_d", duration_scale), sr=16000, seed=seed + 1000 * a + i)
            if traps:  # the MP3 twin (content irrelevant: it must never be read)
                (root / "AudioMP3").mkdir(exist_ok=True)
                (root / "AudioMP3" / name.replace(".wav", ".mp3")).write_bytes(b"ID3\x03\x00fake mp3")
    sexes = ["Male" if a % 2 == 0 else "Female" for a in range(actors)]
    (root / "VideoDemographics.csv").write_text(
        '"ActorID","Age","Sex","Race","Ethnicity"\n'
        + "".join(f'{actor},30,"{sex}","Unknown","Not Hispanic"\n' for actor, sex in zip(ids, sexes)))
    if traps:
        (wav_dir / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (wav_dir / f"._{crema_d_names(ids[0], 1)[0]}").write_bytes(b"\x00\x05\x16\x07AppleDouble")
        (wav_dir / "notes.txt").write_text("checked 2015\n")
    return root


def ravdess_names(actor: int, n: int, channel: str = "01", modality: str = "03", ext: str = "wav") -> list[str]:
    """The first n of an actor's 60 speech clip names (song: channel 02), every emotion early on."""
    combos = [(e, i, s, r) for i in ("01", "02") for s in ("01", "02") for r in ("01", "02")
              for e in ravdess.EMOTION_CODES if not (e == "01" and i == "02")]
    combos.sort(key=lambda c: (c[1], c[2], c[3]))
    assert len(combos) == ravdess.EXPECTED_PER_ACTOR
    return [f"{modality}-{channel}-{e}-{i}-{s}-{r}-{actor:02d}.{ext}" for e, i, s, r in combos[:n]]


def make_ravdess(root: Path, actors: int = 2, clips_per_actor: int = 8, seed: int = 0, duration_scale: float = 1.0,
                 traps: bool = True, kaggle_twin: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    for actor in range(1, actors + 1):
        folder = f"Actor_{actor:02d}"
        for i, name in enumerate(ravdess_names(actor, clips_per_actor)):
            channels = 2 if (traps and actor == 1 and i == 0) else 1
            wav = write_wav(root / "Audio_Speech_Actors_01-24" / folder / name,
                            _seconds(rng, "ravdess", duration_scale), sr=48000, channels=channels,
                            seed=seed + 1000 * actor + i)
            if kaggle_twin:
                twin = root / "audio_speech_actors_01-24" / folder / name
                twin.parent.mkdir(parents=True, exist_ok=True)
                twin.write_bytes(wav.read_bytes())
        if traps:
            for i, name in enumerate(ravdess_names(actor, 2, channel="02")):  # song: not speech
                write_wav(root / "Audio_Song_Actors_01-24" / folder / name, 0.2, sr=48000, seed=i)
            video = root / f"Video_Speech_Actor_{actor:02d}" / folder
            video.mkdir(parents=True, exist_ok=True)
            for name in ravdess_names(actor, 2, modality="01", ext="mp4") + ravdess_names(actor, 2, modality="02",
                                                                                            ext="mp4"):
                (video / name).write_bytes(b"\x00\x00\x00\x18ftypmp42")
            (root / "Audio_Speech_Actors_01-24" / folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
            (root / "Audio_Speech_Actors_01-24" / folder / f"._{ravdess_names(actor, 1)[0]}").write_bytes(
                b"\x00\x05\x16\x07AppleDouble")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a small CREMA-D or RAVDESS copy in the release layout.")
    parser.add_argument("corpus", choices=["crema_d", "ravdess"])
    parser.add_argument("out")
    parser.add_argument("--actors", type=int, default=3)
    parser.add_argument("--clips-per-actor", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make = make_crema_d if args.corpus == "crema_d" else make_ravdess
    make(Path(args.out), actors=args.actors, clips_per_actor=args.clips_per_actor, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
