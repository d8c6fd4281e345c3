"""egs/crema_d and egs/ravdess through the template's stages 0-2, from recipe dirs made like the real ones
(their local/data.sh, links to the template), on small copies in the release layouts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mtlser.data.datadir import read_table
from tests.corpus_layouts import make_crema_d, make_ravdess

ROOT = Path(__file__).resolve().parents[1]


def make_recipe(dest: Path, corpus: str) -> Path:
    (dest / "local").mkdir(parents=True)
    for name in ("path.sh", "cmd.sh", "utils", "conf", "ser.sh"):
        (dest / name).symlink_to((ROOT / "egs" / corpus / name).resolve())
    shutil.copy(ROOT / "egs" / corpus / "local" / "data.sh", dest / "local" / "data.sh")
    return dest


def ser(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # path.sh must set up everything itself
    return subprocess.run(["./ser.sh", *args], cwd=recipe, capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_crema_d_recipe_stages_0_to_2(tmp_path):
    # A copy under a folder name with a space: ser.sh's --db-root hands it to local/data.sh as one word.
    db = make_crema_d(tmp_path / "corpora copy" / "CREMA-D", actors=6, clips_per_actor=6, duration_scale=0.2)
    recipe = make_recipe(tmp_path / "egs" / "crema_d", "crema_d")
    r = ser(recipe, "--stage", "0", "--stop-stage", "2", "--protocol", "kfold3", "--valid-share", "0.25",
            "--db-root", str(db), "--local-data-opts", "--check-counts false")
    assert r.returncode == 0, r.stderr[-3000:]
    data = recipe / "data"
    assert read_table(data / "all" / "spk2gender")["1001"] == "m"
    assert "It's eleven o'clock" in (data / "all" / "text").read_text()
    # The recipe's six classes, in its order: the CTC tags are their indices (dis 4, fea 5).
    assert (data / "all" / "emotions").read_text().split() == ["ang", "hap", "sad", "neu", "dis", "fea"]
    assert len((data / "token_list" / "phncls" / "tokens.txt").read_text().split()) == 6 * 6 + 1
    phncls = read_table(data / "all" / "text_phncls")
    assert phncls["1001_IEO_DIS_LO"].split()[0] == "Vs4" and phncls["1001_IEO_FEA_LO"].split()[0] == "Vs5"
    folds = sorted(p.name for p in (data / "kfold3").glob("fold[0-9]*"))
    assert folds == ["fold01", "fold02", "fold03"]
    for fold in folds:
        test_spk = set(read_table(data / "kfold3" / fold / "test" / "utt2spk").values())
        assert len(test_spk) == 2 and sorted(read_table(data / "all" / "spk2gender")[s] for s in test_spk) == ["f", "m"]
        assert not test_spk & set(read_table(data / "kfold3" / fold / "train" / "utt2spk").values())


@pytest.mark.slow
def test_ravdess_recipe_stages_0_to_2_with_a_published_partition(tmp_path):
    db = make_ravdess(tmp_path / "RAVDESS", actors=4, clips_per_actor=8, duration_scale=0.2)
    recipe = make_recipe(tmp_path / "egs" / "ravdess", "ravdess")
    # EmoBox's layout and line format: its keys and download paths, its label spelling.
    names = {"01": "Neutral", "02": "Calm", "03": "Happy", "04": "Sad", "05": "Angry", "06": "Fearful",
             "07": "Disgust", "08": "Surprised"}
    part = tmp_path / "EmoBox" / "data" / "ravdess"
    clips = sorted((db / "Audio_Speech_Actors_01-24").glob("Actor_*/03-01-*.wav"))
    for n, test_actors in ((1, ("03", "04")), (2, ("01", "02"))):
        (part / f"fold_{n}").mkdir(parents=True)
        for side in ("train", "test"):
            lines = [json.dumps({"key": f"ravdess-{c.stem}", "dataset": "ravdess",
                                 "wav": f"downloads/ravdess/audio/Audio_Speech_Actors_01-24/{c.parent.name}/{c.name}",
                                 "emo": names[c.name.split("-")[2]]})
                     for c in clips if (c.stem[-2:] in test_actors) == (side == "test")]
            (part / f"fold_{n}" / f"ravdess_{side}_fold_{n}.jsonl").write_text("\n".join(lines) + "\n")
    r = ser(recipe, "--stage", "0", "--stop-stage", "2", "--partition", str(part), "--valid-share", "0.25",
            "--local-data-opts", f"--db-root {db} --emotion-map conf/emotions/ravdess_calm_merged.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "the folds come from its files (protocol partition, not loso)" in r.stderr  # said, not silent
    data = recipe / "data"
    assert read_table(data / "partition" / "protocol")["protocol"] == "partition"
    test1 = set(read_table(data / "partition" / "fold01" / "test" / "utt2spk").values())
    assert test1 == {"Actor_03", "Actor_04"}
    valid1 = set(read_table(data / "partition" / "fold01" / "valid" / "utt2spk").values())
    assert valid1 == {"Actor_01", "Actor_02"}
    # Calm merged into neutral: seven classes; the partition's Calm and Neutral both map to neu.
    assert (data / "partition" / "fold01" / "test" / "emotions").read_text().split() == \
        ["ang", "hap", "sad", "neu", "fea", "dis", "sur"]
    assert "calm" not in read_table(data / "all" / "utt2emo").values()
    # 48 kHz clips were converted to 16 kHz once, in stage 2.
    assert all("/data/wav16k/" in p for p in read_table(data / "partition" / "fold01" / "test" / "wav.scp").values())
