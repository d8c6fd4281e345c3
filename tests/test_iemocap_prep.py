"""Stage 0 on a hand-written corpus in IEMOCAP_full_release's exact layout, with each of its irregularities.

The fixture is written file by file below (no generator), so each quirk is visible:
summary + evaluator lines, a Categorical/ sub-folder whose file looks like a summary,
.DS_Store and ._ AppleDouble files, stereo dialog wavs, varied dialog names, an M turn
inside an F dialog (and the reverse), fru/xxx/sur/exc labels, XX transcript lines,
transcripts of only non-verbal tags, CRLF line ends, and a missing wav.
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from tests.conftest import write_wav
from mtlser.corpora import iemocap
from mtlser.corpora.__main__ import main as corpora_main
from mtlser.corpora.prep import prepare
from mtlser.data.datadir import read_table, validate_data_dir
from mtlser.utils import MtlserError

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def block(start, end, turn, label, names="Neutral state"):
    """One EmoEvaluation block: the summary line, then evaluator lines as in the release."""
    return (f"[{start:.4f} - {end:.4f}]\t{turn}\t{label}\t[2.5000, 3.0000, 2.5000]\n"
            f"C-E2:\t{names};\t()\n"
            f"C-E4:\t{names};\t()\n"
            f"C-F1:\t{names};\t(a comment)\n"
            f"A-E3:\tval 3; act 2; dom  2;\t()\n"
            f"A-F1:\tval 3; act 3; dom  3;\t()\n\n")


#: (session, dialog, [(turn, label, transcript or None, has wav)], extra transcript lines)
DIALOGS = [
    (1, "Ses01F_impro01", [
        ("Ses01F_impro01_F000", "neu", "Excuse me.", True),
        ("Ses01F_impro01_M000", "ang", "Do you have your forms?", True),   # M actor in an F dialog
        ("Ses01F_impro01_F001", "exc", "Yeah! That's great.", True),       # exc -> hap
        ("Ses01F_impro01_M001", "fru", "I'm sorry.", True),                # dropped: fru
        ("Ses01F_impro01_F002", "hap", "[LAUGHTER]", True),                # kept, no phones
        ("Ses01F_impro01_M002", "xxx", "Okay.", True),                     # dropped: xxx
    ], ["Ses01F_impro01_MXX0 [030.0000-031.2000]: Mm-hmm."]),           # no evaluated turn
    (1, "Ses01M_script01_1", [
        ("Ses01M_script01_1_F000", "sad", "What did he say?", True),      # F actor in an M dialog
        ("Ses01M_script01_1_M000", "neu", "Nothing much.", False),         # wav missing
        ("Ses01M_script01_1_M001", "neu", "[BREATHING] [GARBAGE]", True),  # kept, no phones
        ("Ses01M_script01_1_M002", "ang", None, True),                     # no transcript line: kept
    ], ["Ses01M_script01_1_FXX0 [050.0000-051.0000]: [LAUGHTER] Right."]),
    (2, "Ses02F_impro05a", [
        ("Ses02F_impro05a_F000", "ang", "Get out.", True),
        ("Ses02F_impro05a_M000", "sur", "What?", True),                    # dropped: sur
        ("Ses02F_impro05a_M001", "neu", "Fine.", True),
    ], []),
    (3, "Ses03M_script02_2b", [
        ("Ses03M_script02_2b_F000", "neu", "Hello there.", True),
        ("Ses03M_script02_2b_M000", "exc", "We won!", True),
    ], []),
    (4, "Ses04F_script01_1", [
        ("Ses04F_script01_1_F000", "sad", "It's gone.", True),
        ("Ses04F_script01_1_M000", "fea", "Watch out.", True),             # dropped: fea
    ], []),
    (5, "Ses05M_script01_1b", [
        ("Ses05M_script01_1b_F000", "hap", "Good morning.", True),
        ("Ses05M_script01_1b_M000", "neu", "Morning.", True),
        ("Ses05M_script01_1b_M001", "dis", "Ugh.", True),                  # dropped: dis
        ("Ses05M_script01_1b_F001", "oth", "Hm.", True),                   # dropped: oth
    ], []),
]

EXPECTED_EMO = {
    "Ses01F_impro01_F000": "neu", "Ses01F_impro01_M000": "ang", "Ses01F_impro01_F001": "hap",
    "Ses01F_impro01_F002": "hap", "Ses01M_script01_1_F000": "sad", "Ses01M_script01_1_M001": "neu",
    "Ses01M_script01_1_M002": "ang", "Ses02F_impro05a_F000": "ang", "Ses02F_impro05a_M001": "neu",
    "Ses03M_script02_2b_F000": "neu", "Ses03M_script02_2b_M000": "hap", "Ses04F_script01_1_F000": "sad",
    "Ses05M_script01_1b_F000": "hap", "Ses05M_script01_1b_M000": "neu",
}
def kaldi_id(turn: str) -> str:
    """Speaker-prefixed: the turn's speaker is its session and the gender letter of its last field."""
    return f"{turn[:5]}{turn.rsplit('_', 1)[1][0]}-{turn}"


EXPECTED_DROPPED = {
    "Ses01F_impro01_M001": "label:fru", "Ses01F_impro01_M002": "label:xxx", "Ses01M_script01_1_M000": "no_audio",
    "Ses02F_impro05a_M000": "label:sur", "Ses04F_script01_1_M000": "label:fea",
    "Ses05M_script01_1b_M001": "label:dis", "Ses05M_script01_1b_F001": "label:oth",
}


@pytest.fixture
def release(tmp_path):
    """A five-session IEMOCAP_full_release in miniature."""
    root = tmp_path / "IEMOCAP_full_release"
    (root / "Documentation").mkdir(parents=True)
    (root / "README.txt").write_text("IEMOCAP\n")
    for i, (session, dialog, turns, extra) in enumerate(DIALOGS):
        sess = root / f"Session{session}"
        emo_dir, trans_dir = sess / "dialog/EmoEvaluation", sess / "dialog/transcriptions"
        wav_dir = sess / "sentences/wav" / dialog
        for d in (emo_dir, trans_dir, wav_dir, sess / "dialog/wav"):
            d.mkdir(parents=True, exist_ok=True)
        emo, trans, t = [HEADER], [], 5.0
        for j, (turn, label, words, has_wav) in enumerate(turns):
            emo.append(block(t, t + 0.5, turn, label))
            if words is not None:
                trans.append(f"{turn} [{t:08.4f}-{t + 0.5:08.4f}]: {words}")
            if has_wav:
                write_wav(wav_dir / f"{turn}.wav", 0.5, seed=10 * i + j)
            t += 1.0
        trans.extend(extra)
        (emo_dir / f"{dialog}.txt").write_text("".join(emo))
        # The release's transcripts have CRLF line ends in places: one file here does.
        eol = "\r\n" if session == 2 else "\n"
        (trans_dir / f"{dialog}.txt").write_bytes((eol.join(trans) + eol).encode())
        # Stereo dialog-level recording: never an utterance.
        write_wav(sess / "dialog/wav" / f"{dialog}.wav", 0.5, channels=2)
        # macOS leftovers: .DS_Store, and ._ AppleDouble twins of files and wavs.
        (emo_dir / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1\x00")
        (emo_dir / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X  [\x00\x01")
        (wav_dir / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1\x00")
        (wav_dir / f"._{turns[0][0]}.wav").write_bytes(b"\x00\x05\x16\x07")
    # Per-evaluator files in a sub-folder: if read, they would relabel and duplicate turns.
    cat = root / "Session1/dialog/EmoEvaluation/Categorical"
    cat.mkdir()
    (cat / "Ses01F_impro01_e1_cat.txt").write_text(
        "[5.0000 - 5.5000]\tSes01F_impro01_F000\tang\t[1.0000, 1.0000, 1.0000]\n"
        "Ses01F_impro01_F000 :Anger; ()\n")
    (root / "Session1/dialog/EmoEvaluation/Attribute").mkdir()
    (root / "Session1/dialog/EmoEvaluation/Self-evaluation").mkdir()
    return root


def test_prep_writes_the_data_dir_of_the_release(release, tmp_path, caplog):
    out = tmp_path / "data/all"
    with caplog.at_level(logging.INFO):
        prepare(iemocap.CORPUS, release, out, skip_missing_audio=True)
    dd = validate_data_dir(out)
    assert dict(dd["utt2emo"]) == {kaldi_id(t): e for t, e in EXPECTED_EMO.items()}
    # The turn names stay available: utt2origid maps each id back.
    assert read_table(out / "utt2origid") == {kaldi_id(t): t for t in EXPECTED_EMO}

    # Speakers come from each turn's own id, not from the dialog name.
    spk = read_table(out / "utt2spk")
    assert spk["Ses01M-Ses01F_impro01_M000"] == "Ses01M"
    assert spk["Ses01F-Ses01M_script01_1_F000"] == "Ses01F"
    assert spk["Ses03F-Ses03M_script02_2b_F000"] == "Ses03F"
    assert all(u.startswith(s + "-") for u, s in spk.items())
    assert read_table(out / "spk2utt")["Ses01M"].split() == [
        "Ses01M-Ses01F_impro01_M000", "Ses01M-Ses01M_script01_1_M001", "Ses01M-Ses01M_script01_1_M002"]
    assert set(read_table(out / "utt2session").values()) == {"Ses01", "Ses02", "Ses03", "Ses04", "Ses05"}

    # Sentence wavs only, by dialog folder; never the stereo session files or ._ twins.
    wavs = read_table(out / "wav.scp")
    assert wavs["Ses05F-Ses05M_script01_1b_F000"] == str(
        release / "Session5/sentences/wav/Ses05M_script01_1b/Ses05M_script01_1b_F000.wav")
    assert not any("/dialog/wav/" in w or "/._" in w for w in wavs.values())
    assert read_table(out / "utt2dur")["Ses01F-Ses01F_impro01_F000"] == "0.5000"

    # Transcripts: words kept as written (stage 1 cleans them); CRLF gone; tags-only and
    # missing transcripts kept with the emotion label; XX lines never become utterances.
    text = read_table(out / "text", allow_empty_value=True)
    assert text[kaldi_id("Ses01F_impro01_F001")] == "Yeah! That's great."
    assert text[kaldi_id("Ses02F_impro05a_F000")] == "Get out."
    assert text[kaldi_id("Ses01F_impro01_F002")] == "[LAUGHTER]"
    assert text[kaldi_id("Ses01M_script01_1_M001")] == "[BREATHING] [GARBAGE]"
    assert text[kaldi_id("Ses01M_script01_1_M002")] == ""
    assert not any("XX" in u for u in text)

    # Each dropped turn with its reason, and the counts.
    report_dir = tmp_path / "data/local/iemocap_prep"
    assert read_table(report_dir / "dropped") == EXPECTED_DROPPED
    report = json.loads((report_dir / "counts.json").read_text())
    assert report["counts"] == {"ang": 3, "hap": 4, "sad": 2, "neu": 5}
    assert report["total"] == 14
    assert report["per_session"]["Ses01"] == {"ang": 2, "hap": 2, "sad": 1, "neu": 2}
    assert report["per_speaker"]["Ses01M"] == {"ang": 2, "hap": 0, "sad": 0, "neu": 1}
    assert report["raw_labels"]["Ses01"] == {"ang": 2, "hap": 1, "exc": 1, "sad": 1, "neu": 3, "fru": 1,
                                             "xxx": 1}
    assert report["dropped"] == {"label:dis": 1, "label:fea": 1, "label:fru": 1, "label:oth": 1,
                                 "label:sur": 1, "label:xxx": 1, "no_audio": 1}
    assert report["nonverbal_only"] == 2 and report["no_transcript"] == 1
    assert report["transcript_lines_of_no_evaluated_turn"] == 2

    # The counts are printed, and a full five-session copy that is not 5531 is flagged loudly.
    log = caplog.text
    assert re.search(r"Ses01 +2 +2 +1 +2 +7\n", log) and re.search(r"all +3 +4 +2 +5 +14\n", log)
    assert "raw labels: ang=3 hap=2 exc=2 sad=2 neu=6 fru=1 sur=1 fea=1 dis=1 oth=1 xxx=1" in log
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "full release" in r.getMessage()]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "!!!!!!!!" in msg and "14 utterances" in msg and "5531" in msg
    assert "Session5: 2 utterances, the release gives 1241" in msg


def test_no_counts_warning_when_the_copy_matches(release, tmp_path, caplog, monkeypatch):
    # The check compares with the release's figures; with figures equal to this copy's it stays quiet.
    monkeypatch.setattr(iemocap, "EXPECTED_COUNTS", {"ang": 3, "hap": 4, "sad": 2, "neu": 5})
    monkeypatch.setattr(iemocap, "EXPECTED_SESSION_COUNTS", {1: 7, 2: 2, 3: 2, 4: 1, 5: 2})
    with caplog.at_level(logging.INFO):
        prepare(iemocap.CORPUS, release, tmp_path / "all", skip_missing_audio=True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "full release" in r.getMessage()]
    assert "counts match the full IEMOCAP release" in caplog.text


def test_subset_of_sessions_is_checked_per_session(release, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        prepare(iemocap.CORPUS, release, tmp_path / "all", sessions=[2, 3])
    assert sorted(set(read_table(tmp_path / "all" / "utt2session").values())) == ["Ses02", "Ses03"]
    assert "Session2: 2 utterances, the release gives 1023" in caplog.text
    caplog.clear()
    prepare(iemocap.CORPUS, release, tmp_path / "all", sessions=[2, 3], check_counts=False)
    assert "full release" not in caplog.text


def test_missing_wav_fails_by_default_naming_the_file(release, tmp_path):
    out = tmp_path / "all"
    with pytest.raises(MtlserError, match=r"1 evaluated turns .* no audio, e.g. .*Session1/sentences/wav/"
                                          r"Ses01M_script01_1/Ses01M_script01_1_M000\.wav.*--skip-missing-audio"):
        prepare(iemocap.CORPUS, release, out)
    assert not out.exists()  # nothing half-written


def test_cli_exit_status_and_options(release, tmp_path):
    from mtlser.utils import run_main

    out = tmp_path / "all"

    assert run_main(corpora_main, ["iemocap", "--db-root", str(release), "--out", str(out)]) == 1
    assert run_main(corpora_main, ["iemocap", "--db-root", str(release), "--out", str(out), "--skip-missing-audio",
                                   "--sessions", "1", "--report-dir", str(tmp_path / "rep")]) == 0
    assert len(read_table(out / "utt2emo")) == 7
    assert (tmp_path / "rep/counts.json").is_file()


@pytest.mark.parametrize("bad_line, message", [
    ("[5.0000 - 5.5000]\tSes01F_impro01_F009\tang\n", r"Ses01F_impro01\.txt:\d+: a line starting with '\[' "
                                                     r"is not a summary line"),
    ("[9.0 - 9.5]\tSes01F_impro01_F009\tcon\t[1, 2, 3]\n", r"Ses01F_impro01\.txt:\d+: unknown emotion code 'con'"),
    ("[9.0 - 9.5]\tSes01F_impro01F009\tang\t[1, 2, 3]\n", r"Ses01F_impro01\.txt:\d+: 'Ses01F_impro01F009' is "
                                                         r"not an IEMOCAP turn name"),
    ("[9.0 - 9.5]\tSes01F_impro02_F009\tang\t[1, 2, 3]\n", r"Ses01F_impro01\.txt:\d+: turn Ses01F_impro02_F009 "
                                                          r"belongs to dialog Ses01F_impro02"),
    ("[9.0 - 9.5]\tSes01F_impro01_F000\tang\t[1, 2, 3]\n", r"Ses01F_impro01\.txt:\d+: turn Ses01F_impro01_F000 "
                                                          r"is listed twice"),
    ("[9.0 - 9.5]\tSes01F_impro01_F009\tang\t[1, 2, 5.5]\n", r"Ses01F_impro01\.txt:\d+: \[V, A, D\] '\[1, 2, 5.5\]' "
                                                            r"is not three values of the scale 1-5"),
    ("[9.0 - 9.5]\tSes01F_impro01_F009\tang\t[1, 2]\n", r"Ses01F_impro01\.txt:\d+: \[V, A, D\] '\[1, 2\]' is not"),
])
def test_bad_summary_lines_are_errors_with_file_and_line(release, tmp_path, bad_line, message):
    path = release / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    path.write_text(path.read_text() + bad_line)
    with pytest.raises(MtlserError, match=message):
        prepare(iemocap.CORPUS, release, tmp_path / "all", skip_missing_audio=True)


def test_attributes_of_the_summary_line(release, tmp_path):
    """[V, A, D] of each kept turn -> utt2attr as arousal valence dominance, declared on IEMOCAP's scale 1-5."""
    out = tmp_path / "all"
    prepare(iemocap.CORPUS, release, out, skip_missing_audio=True)
    attrs = read_table(out / "utt2attr")
    assert set(attrs) == set(read_table(out / "utt2emo"))
    # block() writes [V, A, D] = [2.5, 3, 2.5]: arousal first.
    assert set(attrs.values()) == {"3 2.5 2.5"}
    assert (out / "attributes").read_text() == "arousal 1 5\nvalence 1 5\ndominance 1 5\n"
    assert iemocap.parse_vad("1.5, 4.0, 2.25", "x:1") == (4.0, 1.5, 2.25)


def test_parse_turn_name():
    assert iemocap.parse_turn_name("Ses01F_impro01_M003") == ("Ses01F_impro01", 1, "Ses01M")
    assert iemocap.parse_turn_name("Ses05M_script01_1b_F012") == ("Ses05M_script01_1b", 5, "Ses05F")
    assert iemocap.parse_turn_name("Ses03M_impro05a_M020") == ("Ses03M_impro05a", 3, "Ses03M")
    with pytest.raises(ValueError):
        iemocap.parse_turn_name("Ses03F_impro05_MXX0")  # a transcript-only id
