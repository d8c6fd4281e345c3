"""python -m mtlser.data.combine: several corpora's data dirs -> one, on a declared inventory."""

from __future__ import annotations

import pytest

from mtlser.data.combine import main
from mtlser.data.datadir import DataDirError, read_table, validate_data_dir
from mtlser.data.emotions import read_inventory


def test_combine_prefixes_colliding_ids_maps_labels_and_records_the_corpus(make_data_dir, tmp_path, caplog):
    a = make_data_dir("a", n_spk=2, n_utt=3, emotions=["ang", "hap", "sad", "neu", "fea"])
    b = make_data_dir("b", n_spk=2, n_utt=2)  # the same speaker and utterance ids as a
    (tmp_path / "map.yaml").write_text("emotions: [neu, ang, joy]\nmerge: {hap: joy}\n")
    out = tmp_path / "both"
    main([str(out), f"crema_d={a}", f"ravdess={b}", "--emotion-map", str(tmp_path / "map.yaml")])
    dd = validate_data_dir(out)
    assert read_inventory(out) == ["neu", "ang", "joy"]
    corpus = read_table(out / "utt2corpus")
    # every id carries its corpus, speakers too, so speaker ids stay prefixes of utterance ids
    assert all(u.startswith(c + "-") and dd["utt2spk"][u].startswith(c + "-") for u, c in corpus.items())
    src_a, src_b = read_table(a / "utt2emo"), read_table(b / "utt2emo")
    kept_a = {u: e for u, e in src_a.items() if e in ("neu", "ang", "hap")}
    assert {u for u, c in corpus.items() if c == "crema_d"} == {f"crema_d-{u}" for u in kept_a}
    assert all(dd["utt2emo"][f"crema_d-{u}"] == {"hap": "joy"}.get(e, e) for u, e in kept_a.items())
    assert len(corpus) == len(kept_a) + sum(e in ("neu", "ang", "hap") for e in src_b.values())
    # the corpus's own names stay: utt2origid maps back
    assert read_table(out / "utt2origid") == {u: u.split("-", 1)[1] for u in corpus}
    assert read_table(out / "wav.scp")[f"ravdess-{sorted(src_b)[0]}"] == read_table(b / "wav.scp")[sorted(src_b)[0]]


def test_combine_keeps_unique_ids_and_leaves_out_files_not_every_input_has(make_data_dir, tmp_path):
    a = make_data_dir("a", n_spk=2, n_utt=2)
    b = make_data_dir("b", n_spk=4, n_utt=2)
    # b's ids apart from a's: keep only b's second session's speakers (Ses02F, Ses02M)
    for name in ("wav.scp", "text", "utt2spk", "utt2emo", "utt2dur", "utt2session"):
        t = read_table(b / name, allow_empty_value=True)
        (b / name).write_text("".join(f"{u} {v}\n" for u, v in t.items() if u.startswith("Ses02")))
    (b / "spk2utt").unlink()
    (b / "utt2session").unlink()
    out = tmp_path / "both"
    main([str(out), str(a), str(b)])
    dd = validate_data_dir(out)
    assert set(read_table(out / "utt2corpus").values()) == {"a", "b"}
    assert set(dd["utt2spk"].values()) == {"Ses01F", "Ses01M", "Ses02F", "Ses02M"}  # no prefix needed
    assert not (out / "utt2session").exists()


def test_combine_errors(make_data_dir, tmp_path):
    a = make_data_dir("a", n_spk=2, n_utt=2)
    with pytest.raises(DataDirError, match="repeat"):
        main([str(tmp_path / "o"), f"x={a}", f"x={a}"])
    with pytest.raises(DataDirError, match="NAME without '-'"):
        main([str(tmp_path / "o"), f"x-y={a}"])
    (tmp_path / "none.yaml").write_text("emotions: [fru, dis]\n")
    with pytest.raises(DataDirError, match="no utterance of x has a label"):
        main([str(tmp_path / "o"), f"x={a}", "--emotion-map", str(tmp_path / "none.yaml")])
