"""Stage 0 for MSP-Podcast on a small copy in the release's layout (Audios/, Labels/labels_consensus.csv,
Transcripts/): the exact data dir (classes, attributes, sets, speakers, transcripts), and bad rows naming
file and line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mtlser.corpora import msp_podcast
from mtlser.corpora.prep import prepare
from mtlser.data.datadir import validate_data_dir
from mtlser.data.emotions import load_emotion_map
from mtlser.utils import MtlserError
from tests.conftest import ROOT, write_wav

MAP = ROOT / "conf" / "emotions" / "msp_podcast.yaml"
HEADER = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"
# FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set
ROWS = [
    ("MSP-PODCAST_0001_0008.wav", "A", "5.8", "2.2", "5.4", "127", "Male", "Train"),
    ("MSP-PODCAST_0001_0019.wav", "N", "4", "4.2", "4", "127", "Male", "Development"),
    ("MSP-PODCAST_0002_0003.wav", "O", "3.2", "3.6", "3.5", "Unknown", "Unknown", "Train"),
    ("MSP-PODCAST_0002_0004.wav", "H", "4.6", "6", "4.4", "Unknown", "Unknown", "Test1"),
    ("MSP-PODCAST_0003_0001.wav", "X", "1", "7", "2.8", "33", "Female", "Test2"),
    ("MSP-PODCAST_0003_0002.wav", "C", "3.4", "2.4", "5", "33", "Female", "Train"),
]


def make_msp(root: Path, rows=ROWS, header: str = HEADER, transcripts: bool = True) -> Path:
    for i, row in enumerate(rows):
        write_wav(root / "Audios" / row[0], 0.5, seed=i)
        if transcripts and i != 1:  # one segment of the release without a transcript
            (root / "Transcripts").mkdir(parents=True, exist_ok=True)
            (root / "Transcripts" / f"{Path(row[0]).stem}.txt").write_text(f"well  this is\nsegment {i}\n")
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    (root / "Labels" / "labels_consensus.csv").write_text(
        "\n".join([header] + [",".join(r) for r in rows]) + "\n")
    (root / "Labels" / "labels_detailed.csv").write_text("not read\n")
    return root


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_release_layout_gives_the_exact_data_dir(tmp_path, caplog):
    db = make_msp(tmp_path / "MSP-Podcast")
    out = tmp_path / "data" / "all"
    with caplog.at_level(logging.INFO):
        report = prepare(msp_podcast.CORPUS, db, out, load_emotion_map(MAP))
    validate_data_dir(out)
    audio = db.resolve() / "Audios"
    # Utterance ids are <speaker>-<file stem> (the shared prepare's Kaldi ids), so they sort speaker-first.
    u8, u19 = "spk127-MSP-PODCAST_0001_0008", "spk127-MSP-PODCAST_0001_0019"
    u31, u32 = "spk33-MSP-PODCAST_0003_0001", "spk33-MSP-PODCAST_0003_0002"
    unk3 = "unk_MSP-PODCAST_0002_0003-MSP-PODCAST_0002_0003"
    unk4 = "unk_MSP-PODCAST_0002_0004-MSP-PODCAST_0002_0004"
    ids = [u8, u19, u31, u32, unk3, unk4]  # u[-21:]: the file stem

    def table(*values):
        return "".join(f"{u} {v}\n" if v else f"{u}\n" for u, v in zip(ids, values))

    assert read(out / "wav.scp") == table(*(f"{audio}/{u[-21:]}.wav" for u in ids))
    assert read(out / "utt2origid") == table(*(u[-21:] for u in ids))
    # O and X leave the classes ("-": no class) but keep their attributes.
    assert read(out / "utt2emo") == table("ang", "neu", "-", "con", "-", "hap")
    assert read(out / "utt2attr") == table("5.8 2.2 5.4", "4 4.2 4", "1 7 2.8", "3.4 2.4 5", "3.2 3.6 3.5",
                                           "4.6 6 4.4")
    assert read(out / "attributes") == "arousal 1 7\nvalence 1 7\ndominance 1 7\n"
    assert read(out / "utt2set") == table("train", "dev", "test2", "train", "train", "test")
    # Each Unknown-speaker segment is its own pseudo-speaker; known speakers keep their segments together.
    assert read(out / "utt2spk") == table("spk127", "spk127", "spk33", "spk33", "unk_MSP-PODCAST_0002_0003",
                                          "unk_MSP-PODCAST_0002_0004")
    # Transcripts where the release has them (whitespace folded); the one without trains without CTC.
    assert read(out / "text") == table("well this is segment 0", "", "well this is segment 4",
                                       "well this is segment 5", "well this is segment 2", "well this is segment 3")
    assert "1 segments have no transcript (e.g. MSP-PODCAST_0001_0019); kept, they train without the CTC term" \
        in caplog.text
    assert read(out / "emotions") == "ang\nhap\nsad\nneu\ndis\nfea\nsur\ncon\n"
    assert not (out / "spk2gender").exists()  # the pseudo-speakers' gender is unknown
    assert report["total"] == 6 and report["counts"]["-"] == 2 and report["counts"]["ang"] == 1
    assert report["unknown_speaker_segments"] == 2
    assert report["split_sets"] == {"Development": 1, "Test1": 1, "Test2": 1, "Train": 3}


def test_without_transcripts_the_ctc_task_is_off_and_said(tmp_path, caplog):
    db = make_msp(tmp_path / "MSP-Podcast", transcripts=False)
    with caplog.at_level(logging.WARNING):
        prepare(msp_podcast.CORPUS, db, tmp_path / "all", load_emotion_map(MAP))
    assert all(len(line.split()) == 1 for line in read(tmp_path / "all" / "text").splitlines())
    assert "no transcripts: every segment trains without the CTC term" in caplog.text
    # A user's ASR transcripts, in the release's layout, take the release's place.
    asr = tmp_path / "asr"
    asr.mkdir()
    (asr / "MSP-PODCAST_0001_0008.txt").write_text("hello there\n")
    prepare(msp_podcast.CORPUS, db, tmp_path / "all2", load_emotion_map(MAP), transcripts=str(asr))
    assert read(tmp_path / "all2" / "text").startswith("spk127-MSP-PODCAST_0001_0008 hello there\n"
                                                        "spk127-MSP-PODCAST_0001_0019\n")


def bad(row: int, column: int, value: str):
    rows = [list(r) for r in ROWS]
    rows[row][column] = value
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("rows, header, match", [
    (bad(2, 3, "7.5"), HEADER, r"labels_consensus.csv:4: EmoVal '7.5' is not a value of the scale 1-7"),
    (bad(0, 2, "abc"), HEADER, r"labels_consensus.csv:2: EmoAct 'abc' is not a value of the scale 1-7"),
    (bad(4, 4, "0.5"), HEADER, r"labels_consensus.csv:6: EmoDom '0.5' is not a value"),
    (ROWS, HEADER.replace(",EmoDom", ""), r"labels_consensus.csv:1: missing column\(s\) EmoDom"),
    (bad(3, 7, "Test9"), HEADER, r"labels_consensus.csv:5: unknown Split_Set 'Test9'"),
    (bad(5, 0, ROWS[0][0]), HEADER, r"labels_consensus.csv:7: MSP-PODCAST_0001_0008.wav is listed twice "
                                    r"\(Train at line 2, Train here\)"),
    (bad(1, 1, "Z"), HEADER, r"labels_consensus.csv:3: unknown EmoClass 'Z'"),
    (bad(1, 5, "abc"), HEADER, r"labels_consensus.csv:3: SpkrID 'abc'"),
])
def test_bad_rows_stop_with_file_and_line(tmp_path, rows, header, match):
    db = make_msp(tmp_path / "MSP-Podcast", rows=rows, header=header)
    with pytest.raises(MtlserError, match=match):
        prepare(msp_podcast.CORPUS, db, tmp_path / "all", load_emotion_map(MAP))
    assert not (tmp_path / "all").exists()


def test_command_line_and_fixed_split(tmp_path):
    from mtlser.corpora.__main__ import main as corpora_main
    from mtlser.data.split import split

    db = make_msp(tmp_path / "MSP-Podcast")
    assert corpora_main(["msp_podcast", "--db-root", str(db), "--out", str(tmp_path / "data/all")]) == 0
    split(tmp_path / "data/all", tmp_path / "data/fixed", "fixed")
    fold = tmp_path / "data/fixed/fold01"
    assert sorted(p.name for p in fold.iterdir()) == ["test", "test2", "train", "valid"]
    assert read(fold / "valid" / "utt2set") == "spk127-MSP-PODCAST_0001_0019 dev\n"
    for name in ("train", "valid", "test", "test2"):  # the declaration travels with every data dir of the fold
        assert read(fold / name / "attributes") == "arousal 1 7\nvalence 1 7\ndominance 1 7\n"
        validate_data_dir(fold / name)
