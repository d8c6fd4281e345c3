"""The Kaldi data-dir contract: read, write, validate, fix."""

from __future__ import annotations

import pytest

from mtlser.data.datadir import (
    DataDir,
    DataDirError,
    fix_data_dir,
    read_table,
    spk2utt_from_utt2spk,
    validate_data_dir,
    write_table,
)


def test_write_table_sorts_in_c_locale(tmp_path):
    path = tmp_path / "t"
    write_table(path, {"b": "2", "B": "1", "a_1": "x", "a-1": "y", "ü": "z"})
    keys = [line.split()[0] for line in path.read_text().splitlines()]
    # C locale = byte order: upper case before lower, '-' before '_', non-ASCII last.
    assert keys == ["B", "a-1", "a_1", "b", "ü"]


def test_read_table_reports_file_and_line(tmp_path):
    path = tmp_path / "utt2spk"
    path.write_text("u1 s1\nu2 s2\nu1 s3\n")
    with pytest.raises(DataDirError, match=r"utt2spk:3: duplicate key 'u1'"):
        read_table(path)
    path.write_text("u1 s1\nu2\n")
    with pytest.raises(DataDirError, match=r"utt2spk:2: key 'u2' has no value"):
        read_table(path)
    assert read_table(path, allow_empty_value=True) == {"u1": "s1", "u2": ""}


def test_spk2utt_is_derived_from_utt2spk():
    assert spk2utt_from_utt2spk({"b": "s2", "a": "s1", "c": "s1"}) == {"s1": "a c", "s2": "b"}


def test_valid_dir_round_trip(make_data_dir):
    path = make_data_dir(n_spk=2, n_utt=3)
    dd = validate_data_dir(path)
    assert len(dd) == 6
    assert (path / "spk2utt").read_text().splitlines()[0].startswith("Ses01F ")
    sub = dd.subset(dd.utts[:2])
    assert len(sub) == 2 and set(sub["wav.scp"]) == set(dd.utts[:2])


def test_validate_catches_each_broken_invariant(make_data_dir):
    path = make_data_dir(n_spk=2, n_utt=2)
    utt = sorted(read_table(path / "utt2emo"))[0]

    # unknown emotion label, with file and line
    emo = (path / "utt2emo").read_text().replace(f"{utt} ", f"{utt} fru ", 1)
    (path / "utt2emo").write_text(emo.replace(" fru ang", " fru").replace(" fru hap", " fru")
                                  .replace(" fru sad", " fru").replace(" fru neu", " fru"))
    with pytest.raises(DataDirError, match=r"utt2emo:1: utterance .* has label 'fru'"):
        validate_data_dir(path)


def test_validate_missing_wav_and_unsorted(make_data_dir, tmp_path):
    path = make_data_dir(n_spk=2, n_utt=2)
    scp = read_table(path / "wav.scp")
    first = sorted(scp)[0]
    (tmp_path / "wav" / f"{first}.wav").unlink()
    with pytest.raises(DataDirError, match=r"wav.scp:1: audio for .* not found"):
        validate_data_dir(path)
    assert validate_data_dir(path, check_audio=False)

    lines = (path / "text").read_text().splitlines()
    (path / "text").write_text("\n".join(reversed(lines)) + "\n")
    with pytest.raises(DataDirError, match="sorts before it in the C locale"):
        validate_data_dir(path, check_audio=False)


def test_validate_key_sets_and_fix(make_data_dir):
    path = make_data_dir(n_spk=2, n_utt=3)
    lines = (path / "utt2emo").read_text().splitlines()
    (path / "utt2emo").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataDirError, match=r"key set differs from utt2spk \(0 extra.*1 missing"):
        validate_data_dir(path)
    kept, total = fix_data_dir(path)
    assert (kept, total) == (5, 6)
    assert len(validate_data_dir(path)) == 5


def test_empty_transcript_is_allowed_in_text(make_data_dir):
    path = make_data_dir(n_spk=1, n_utt=2, text="[LAUGHTER]")
    text = read_table(path / "text", allow_empty_value=True)
    utt = sorted(text)[0]
    text[utt] = ""
    write_table(path / "text", text)
    dd = validate_data_dir(path)
    assert dd["text"][utt] == ""


def test_write_is_atomic_on_failure(tmp_path):
    good = DataDir({"utt2spk": {"u1": "s1"}, "wav.scp": {"u1": "/x.wav"}})
    good.write(tmp_path / "d")

    class Boom(dict):
        def items(self):
            raise RuntimeError("disk full")

        def __iter__(self):
            raise RuntimeError("disk full")

    bad = DataDir({"utt2spk": {"u2": "s2"}})
    bad.tables["wav.scp"] = Boom()
    with pytest.raises(RuntimeError):
        bad.write(tmp_path / "d")
    # The old dir is intact and no temp dirs are left behind.
    assert read_table(tmp_path / "d" / "utt2spk") == {"u1": "s1"}
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_wav_scp_pipe_entries_read_like_files(tmp_path):
    """A Kaldi pipe (``cmd |``) gives the same float samples as reading the file, quiet audio included."""
    import numpy as np
    import soundfile as sf

    from mtlser.data.dataset import read_audio

    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.array([0, 1, -1, 1, 0] * 400, dtype=np.int16), 16000, subtype="PCM_16")
    loud = tmp_path / "loud.wav"
    sf.write(loud, (0.3 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000, subtype="PCM_16")
    for path in (quiet, loud):
        assert np.array_equal(read_audio(f"cat {path} |"), read_audio(str(path)))


def test_validate_wants_utt2spk_in_speaker_order(make_data_dir):
    """Kaldi's rule: utt2spk sorted on the speaker gives its utterance order (speaker-prefixed ids)."""
    path = make_data_dir(n_spk=2, n_utt=2)
    validate_data_dir(path)
    # IEMOCAP's turn names as ids: Ses01F_dlg_M000 is Ses01M's turn in Ses01F's dialog, sorting among Ses01F's.
    tables = DataDir.load(path).tables
    utt = "Ses01F_dlg_E000"
    for name, table in tables.items():
        table[utt] = table["Ses01M_dlg_M000"]
    DataDir(tables, emotions=DataDir.load(path).emotions).write(path)
    with pytest.raises(DataDirError, match=r"utt2spk:1: 'Ses01F_dlg_E000 Ses01M' is not in speaker order.*"
                                           r"prefix of its utterance ids.*Ses01M-Ses01F_dlg_E000"):
        validate_data_dir(path)


def test_speaker_prefix_with_dash_keeps_order_for_prefix_speakers():
    """'-' sorts before every other safe-name character: spk1's ids stay before spk10's."""
    from mtlser.corpora.prep import kaldi_utt_id
    from mtlser.data.datadir import check_speaker_order

    utt2spk = {kaldi_utt_id(s, c): s for s, c in [("spk1", "x"), ("spk10", "a"), ("spk1", "z")]}
    check_speaker_order(None, utt2spk)  # does not raise
    bad = {f"{s}_{c}": s for s, c in [("spk1", "x"), ("spk10", "a")]}  # '_' would not do
    with pytest.raises(DataDirError, match="not in speaker order"):
        check_speaker_order(None, bad)


@pytest.mark.parametrize("line,match", [
    (b"hello\r world", r"text:1: non-printable character '\\r'"),
    (b"caf\xe9", r"text:1: not valid UTF-8"),
    (b"hello </s> world", r"text:1: the word '</s>' is reserved"),
])
def test_validate_text_like_kaldi(make_data_dir, line, match):
    path = make_data_dir(n_spk=2, n_utt=2)
    lines = (path / "text").read_bytes().split(b"\n")
    key = lines[0].split()[0]
    (path / "text").write_bytes(b"\n".join([key + b" " + line] + lines[1:]))
    with pytest.raises(DataDirError, match=match):
        validate_data_dir(path)


def test_validate_spk2gender(make_data_dir):
    path = make_data_dir(n_spk=2, n_utt=2)
    (path / "spk2gender").write_text("Ses01F f\nSes01M m\n")
    validate_data_dir(path)
    (path / "spk2gender").write_text("Ses01F f\nSes01M male\n")
    with pytest.raises(DataDirError, match=r"spk2gender:2: speaker 'Ses01M' has 'male'"):
        validate_data_dir(path)
    (path / "spk2gender").write_text("Ses01M m\nSes01F f\n")
    with pytest.raises(DataDirError, match=r"spk2gender:2: .*sort"):
        validate_data_dir(path)
    (path / "spk2gender").write_text("Ses01F f\n")
    with pytest.raises(DataDirError, match=r"spk2gender: its speakers differ from utt2spk's .*missing \['Ses01M'\]"):
        validate_data_dir(path)
