"""kfold<K>: whole speakers in K test folds, gender-balanced when spk2gender is given."""

from __future__ import annotations

from collections import Counter

import pytest

from mtlser.data.datadir import read_table, write_table
from mtlser.data.speaker_folds import deal_speakers, kfold_k
from mtlser.data.split import main as split_main, split
from mtlser.utils import MtlserError, run_main


def test_ravdess_sized_folds_have_two_women_and_two_men_each():
    actors = [f"Actor_{a:02d}" for a in range(1, 25)]
    gender = {a: "m" if int(a[-2:]) % 2 else "f" for a in actors}
    folds = deal_speakers(actors, 6, gender)
    assert sorted(s for f in folds for s in f) == actors  # each speaker tested exactly once
    for f in folds:
        assert Counter(gender[s] for s in f) == {"f": 2, "m": 2}
    # Without genders the same dealing would put only men or only women in a fold: why spk2gender matters.
    assert any(len({gender[s] for s in f}) == 1 for f in deal_speakers(actors, 6))


def test_crema_d_sized_folds_differ_by_one_speaker_at_most():
    actors = [str(1001 + i) for i in range(91)]
    gender = {a: "f" if i < 43 else "m" for i, a in enumerate(actors)}
    folds = deal_speakers(actors, 5, gender)
    assert [len(f) for f in folds] == [19, 18, 18, 18, 18]
    assert sorted(s for f in folds for s in f) == actors
    assert all(8 <= Counter(gender[s] for s in f)["f"] <= 9 for f in folds)
    assert deal_speakers(actors, 5, gender) == folds  # deterministic
    with pytest.raises(MtlserError, match="between 2 and the number of speakers"):
        deal_speakers(actors[:3], 4)
    assert kfold_k("kfold10") == 10 and kfold_k("loso") is None and kfold_k("kfold") is None


def test_split_kfold_keeps_test_speakers_out_of_training(make_data_dir, tmp_path):
    data = make_data_dir(n_spk=6, n_utt=6)
    rows = split(data, tmp_path / "kfold3", "kfold3", valid_share=0.2)
    assert len(rows) == 3
    tested = []
    for i in range(1, 4):
        fold = tmp_path / "kfold3" / f"fold{i:02d}"
        test_spk = set(read_table(fold / "test" / "utt2spk").values())
        assert len(test_spk) == 2
        for part in ("train", "valid"):
            assert not test_spk & set(read_table(fold / part / "utt2spk").values())
        tested += sorted(test_spk)
    assert sorted(tested) == sorted(set(read_table(data / "utt2spk").values()))

    # With spk2gender, each fold tests one woman and one man here (3 F, 3 M speakers).
    write_table(data / "spk2gender", {s: s[-1].lower() for s in set(read_table(data / "utt2spk").values())})
    rows = split(data, tmp_path / "g", "kfold3", valid_share=0.2)
    assert all(sorted(s[-1] for s in r["test"].split(",")) == ["F", "M"] for r in rows)
    write_table(data / "spk2gender", {"Ses01F": "f"})
    # the validator's rule (Kaldi's): spk2gender lists exactly the speakers
    with pytest.raises(MtlserError, match=r"spk2gender: its speakers differ from utt2spk's .*missing"):
        split(data, tmp_path / "g", "kfold3")
    (data / "spk2gender").unlink()

    assert run_main(split_main, ["--data-dir", str(data), "--out", str(tmp_path / "x"), "--protocol", "kfold"]) == 1
    with pytest.raises(MtlserError, match=r"expected loso, loso-session, kfold<K>"):
        split(data, tmp_path / "x", "kfoldx")
