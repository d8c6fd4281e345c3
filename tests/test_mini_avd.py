"""The mini corpus with dimensional labels (egs/mini_avd): [V, A, D] from the prosody, and nothing else of
the corpus changed; utt2set of whole speakers from a per-utterance table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mtlser.corpora import iemocap
from mtlser.corpora.prep import prepare
from mtlser.data.datadir import read_table
from mtlser.data.fixed_split import assign_sets
from mtlser.utils import MtlserError


def generate(out, *flags):
    # A fresh process per corpus: espeak-ng keeps state between utterances of one process.
    subprocess.run([sys.executable, "-m", "mtlser.corpora.mini_corpus", "--out", str(out), "--sessions", "1",
                    "--utts-per-speaker", "6", *flags], check=True, capture_output=True)


def test_attributes_follow_the_prosody_and_leave_the_rest_of_the_corpus(tmp_path):
    generate(tmp_path / "plain")
    generate(tmp_path / "avd", "--with-attributes")
    plain, avd = tmp_path / "plain", tmp_path / "avd"
    files = sorted(p.relative_to(plain) for p in plain.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(avd) for p in avd.rglob("*") if p.is_file())
    for rel in files:
        if rel.parent.name == "EmoEvaluation" or rel.name == "README.mtlser.json":
            continue
        assert (plain / rel).read_bytes() == (avd / rel).read_bytes(), rel  # audio and transcripts
    out = {}
    for name, db in (("plain", plain), ("avd", avd)):
        prepare(iemocap.CORPUS, db, tmp_path / name / "all", check_counts=False)
        out[name] = tmp_path / name / "all"
    for table in ("wav.scp", "text", "utt2emo", "utt2spk"):
        a, b = read_table(out["plain"] / table, allow_empty_value=True), read_table(out["avd"] / table,
                                                                                    allow_empty_value=True)
        if table == "wav.scp":
            a, b = ({u: p.split("/sentences/")[1] for u, p in t.items()} for t in (a, b))
        assert a == b, table
    emo = read_table(out["avd"] / "utt2emo")
    attrs = {u: [float(v) for v in s.split()] for u, s in read_table(out["avd"] / "utt2attr").items()}
    # Arousal (column 0) of the loud, fast anger above the slow, quiet sadness; valence (1) of happiness above anger.
    by = {e: [a for u, a in attrs.items() if emo[u] == e] for e in set(emo.values())}
    assert {"ang", "hap", "sad"} <= set(by), by.keys()
    assert min(a[0] for a in by["ang"]) > max(a[0] for a in by["sad"])
    assert min(a[1] for a in by["hap"]) > max(a[1] for a in by["ang"])
    assert all(1 <= v <= 5 for a in attrs.values() for v in a)


def test_assign_sets_by_speaker(make_data_dir):
    data = make_data_dir(n_spk=4, n_utt=2)
    sets = assign_sets(data, "utt2spk", "train=Ses01F,Ses01M dev=Ses02F test=Ses02M")
    spk = read_table(data / "utt2spk")
    assert read_table(data / "utt2set") == sets
    assert {spk[u]: s for u, s in sets.items()} == {"Ses01F": "train", "Ses01M": "train", "Ses02F": "dev",
                                                  "Ses02M": "test"}
    with pytest.raises(MtlserError, match="no set to utt2spk value\\(s\\) Ses02M"):
        assign_sets(data, "utt2spk", "train=Ses01F,Ses01M dev=Ses02F")
    with pytest.raises(MtlserError, match="'Ses01F' is in two sets \\(train and test\\)"):
        assign_sets(data, "utt2spk", "train=Ses01F test=Ses01F")
    with pytest.raises(MtlserError, match="'valid=Ses01F' is not SET=VALUE"):
        assign_sets(data, "utt2spk", "valid=Ses01F")


@pytest.mark.slow
def test_mini_avd_recipe_stages_0_to_6_with_the_fixed_protocol(tmp_path):
    """The done-when corpus: egs/mini_avd's stage 0 (classes and attributes, sets of whole speakers), the fixed
    protocol's one fold (valid = dev), both test sets decoded and scored, the fold packed."""
    import json
    import os
    import shutil

    from tests.conftest import ROOT

    recipe = tmp_path / "egs" / "mini_avd"
    (recipe / "local").mkdir(parents=True)
    for name in ("path.sh", "cmd.sh", "utils", "conf", "ser.sh"):
        (recipe / name).symlink_to((ROOT / "egs" / "mini_avd" / name).resolve())
    shutil.copy(ROOT / "egs" / "mini_avd" / "local" / "data.sh", recipe / "local" / "data.sh")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["./ser.sh", "--stage", "0", "--stop-stage", "6", "--protocol", "fixed", "--ngpu", "0",
                        "--nj", "1", "--train-config", "conf/train_mini_avd.yaml",
                        "--local-data-opts", "--utts-per-speaker 8", "--train-opts", "--train.epochs 2"],
                       cwd=recipe, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    data, exp = recipe / "data", recipe / "exp" / "train_mini_avd_fixed"
    assert (data / "all" / "attributes").read_text() == "arousal 1 5\nvalence 1 5\ndominance 1 5\n"
    assert len(read_table(data / "all" / "utt2attr")) == len(read_table(data / "all" / "utt2emo"))
    fold = data / "fixed" / "fold01"
    spk = {name: set(read_table(fold / name / "utt2spk").values()) for name in ("train", "valid", "test", "test2")}
    assert spk == {"train": {f"Ses0{s}{g}" for s in (1, 2, 3) for g in "FM"}, "valid": {"Ses04F", "Ses04M"},
                   "test": {"Ses05F"}, "test2": {"Ses05M"}}
    for name in ("test", "test2"):
        result = json.loads((exp / "fold01" / f"decode_{name}" / "result.json").read_text())
        assert result["n"] == len(read_table(fold / name / "utt2emo"))
        # Classes and attributes scored: macro-F1 beside WA/UA, CCC per attribute and their mean.
        assert 0 <= result["macro_f1"] <= 1
        attrs = result["attributes"]
        assert attrs["attributes"] == ["arousal", "valence", "dominance"]
        assert set(attrs["ccc"]) == {"arousal", "valence", "dominance"} and -1 <= attrs["mean_ccc"] <= 1
        assert "CCC" in (exp / "fold01" / f"decode_{name}" / "result.txt").read_text()
    assert "decode_test2" in r.stderr and (exp / "RESULTS.md").is_file()
    # RESULTS.md: macro-F1 and the attribute table over the fold, and both test sets listed.
    md = (exp / "RESULTS.md").read_text()
    assert "|macro-F1|" in md and "|mean|CCC|" in md and "|test2|decode_test2|" in md
    assert (exp / "packed" / "fold01.zip").is_file()
