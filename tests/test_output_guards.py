"""Nothing the user did not name is deleted or overwritten (issue 18 item 1), and a full disk during the HF
export is one line with nothing half-written (item 8): mtlser.utils.fileio.check_output and atomic_dir."""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from mtlser.data.datadir import DataDir, write_table
from mtlser.export.__main__ import main as export_main
from mtlser.export.hf import HF_FILES
from mtlser.infer.__main__ import main as infer_main
from mtlser.utils import MtlserError, run_main
from mtlser.utils.fileio import WRITTEN_BY_MTLSER, atomic_dir, remove_written_dir


def tree_digest(d: Path) -> tuple[list[str], str]:
    """The file list under ``d`` and one checksum of their names and bytes."""
    files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if not p.is_dir())
    h = hashlib.sha256()
    for name in files:
        h.update(name.encode() + b"\0" + (d / name).read_bytes())
    return files, h.hexdigest()


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if " ERROR: " in line or line.startswith("ERROR")]


@pytest.fixture
def experiment(tiny_experiment, tmp_path):
    """A copy of the shared experiment (a test that destroyed it would break the others)."""
    exp = tmp_path / "recipe" / "exp" / tiny_experiment.name
    shutil.copytree(tiny_experiment, exp, symlinks=True)
    return exp


def test_export_hf_into_the_experiment_dir_is_refused_and_the_experiment_intact(experiment, tmp_path, capsys):
    pytest.importorskip("transformers")
    before = tree_digest(experiment)
    link = tmp_path / "looks_new"
    link.symlink_to(experiment)
    for out, how in ((experiment, "contains"), (experiment.parent, "contains"), (link, "contains"),
                     (experiment / "fold01", "is"), (experiment / "fold01" / "hf", "lies inside")):
        for extra in ([], ["--overwrite"]):  # --overwrite never replaces an input
            assert run_main(export_main, ["hf", "--model-dir", str(experiment / "fold01"), "--out", str(out)]
                            + extra) == 1
            (line,) = error_lines(capsys.readouterr().err)
            assert f"--out {out}: {how} the input" in line, line
    assert tree_digest(experiment) == before


def test_pack_over_its_own_model_is_refused(experiment, capsys):
    fold = experiment / "fold01"
    before = tree_digest(fold)
    for out in (fold / "best.safetensors", fold / "fold01.zip"):
        assert run_main(export_main, ["pack", "--model-dir", str(fold), "--out", str(out)]) == 1
        (line,) = error_lines(capsys.readouterr().err)
        assert f"--out {out}:" in line and "the input" in line, line
    assert tree_digest(fold) == before


def test_infer_output_onto_an_input_recording_is_refused(tiny_experiment, experiment, tmp_path, capsys):
    wav = sorted((tiny_experiment.parents[1] / "wav").rglob("*.wav"))[0]
    copy = tmp_path / "rec.wav"
    shutil.copy(wav, copy)
    data = copy.read_bytes()
    scp = tmp_path / "wav.scp"
    scp.write_text(f"rec {copy}\n")
    for inputs in ([str(copy)], [str(scp)], [str(tmp_path)]):  # the recording itself, in a wav.scp, in a folder
        assert run_main(infer_main, ["--model", str(experiment / "fold01"), *inputs, "--output", str(copy)]) == 1
        (line,) = error_lines(capsys.readouterr().err)
        assert f"--output {copy}: is the input {copy}" in line, line
    assert copy.read_bytes() == data
    # Labels beside the recordings are fine.
    assert run_main(infer_main, ["--model", str(experiment / "fold01"), str(tmp_path), "--output",
                                 str(tmp_path / "labels.csv")]) == 0
    assert copy.read_bytes() == data and (tmp_path / "labels.csv").is_file()


def test_a_foreign_dir_is_replaced_only_with_overwrite(experiment, tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    args = ["hf", "--model-dir", str(experiment / "fold01"), "--out", str(out)]
    assert run_main(export_main, args) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert f"--out {out}: an existing directory that mtlser did not write" in line and "--overwrite" in line, line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert run_main(export_main, args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(HF_FILES + (WRITTEN_BY_MTLSER,))  # notes.txt gone
    # Its own output is replaced without --overwrite; a file the user put there since is not deleted.
    assert run_main(export_main, args) == 0
    (out / "my_eval.txt").write_text("kept\n")
    capsys.readouterr()
    assert run_main(export_main, args) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "holds 1 file(s) that mtlser did not write (my_eval.txt)" in line, line
    assert (out / "my_eval.txt").read_text() == "kept\n" and (out / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine.")]  # no temp dir left


@pytest.mark.parametrize("how", ["write", "tmpfs"])
def test_a_full_disk_during_export_hf_is_one_line_and_nothing_half_written(experiment, tmp_path, capsys,
                                                                          monkeypatch, how):
    """ENOSPC from mtlser's own writes (monkeypatched) or from the file system (a 200 kB tmpfs, root only):
    one line naming --out and the reason, no traceback, nothing of the new export left, an earlier one intact."""
    pytest.importorskip("transformers")
    base = tmp_path / "small"
    base.mkdir()
    if how == "write":
        real = Path.write_text

        def full(self, *a, **k):
            if self.name == "mtlser_export.json":
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
            return real(self, *a, **k)
    else:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(base)],
                          capture_output=True).returncode != 0:
            pytest.skip("mounting a tmpfs needs root")
    try:
        earlier = base / "earlier"
        earlier.mkdir()
        (earlier / "config.json").write_text("{}\n")
        (earlier / WRITTEN_BY_MTLSER).write_text("config.json\n")  # an earlier export of mtlser's
        if how == "write":
            monkeypatch.setattr(Path, "write_text", full)
        for out in (base / "new", earlier):
            assert run_main(export_main, ["hf", "--model-dir", str(experiment / "fold01"), "--out", str(out)]) == 1
            (line,) = error_lines(capsys.readouterr().err)
            assert f"{out}: cannot write it (No space left on device: the disk is full); nothing was written" in line
        monkeypatch.undo()
        assert not (base / "new").exists()
        assert sorted(p.name for p in base.iterdir()) == ["earlier"]  # no temp dir left
        assert (earlier / "config.json").read_text() == "{}\n"
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(base)], check=True)


def test_a_stage_never_deletes_what_it_did_not_write(tmp_path):
    d = DataDir({"utt2spk": {"s1_a": "s1"}, "wav.scp": {"s1_a": "/x.wav"}, "text": {"s1_a": "A"}})
    out = tmp_path / "data" / "train"
    d.write(out)
    write_table(out / "text_phn", {"s1_a": "AH"})  # a later stage's file (tokenisation): mtlser's too
    d.write(out)  # a rerun replaces its own output
    assert (out / WRITTEN_BY_MTLSER).is_file()
    (out / "notes").write_text("mine\n")
    with pytest.raises(MtlserError, match=r"holds 1 file\(s\) that mtlser did not write \(notes\)"):
        d.write(out)
    with pytest.raises(MtlserError, match="did not write"):
        remove_written_dir(out)
    assert (out / "notes").is_file() and (out / "utt2spk").is_file()
    (out / "notes").unlink()
    remove_written_dir(out)
    assert not out.exists()
    # A dir someone else made, holding only files the stage writes (an older mtlser's), is replaced.
    foreign = tmp_path / "old"
    foreign.mkdir()
    (foreign / "utt2spk").write_text("s1_a s1\n")
    with atomic_dir(foreign) as tmp:
        (tmp / "utt2spk").write_text("s1_b s1\n")
    assert (foreign / "utt2spk").read_text() == "s1_b s1\n"


def test_export_ensemble_into_a_foreign_dir_needs_overwrite(experiment, tmp_path, capsys):
    out = tmp_path / "ens"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    args = ["ensemble", "--exp-dir", str(experiment), "--out", str(out)]
    assert run_main(export_main, args) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert f"--out {out}: an existing directory that mtlser did not write (notes.txt)" in line, line
    assert run_main(export_main, args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [WRITTEN_BY_MTLSER, "ensemble.yaml"]
    assert run_main(export_main, args) == 0  # its own output, replaced
    # An ensemble dir written before the list existed (ensemble.yaml alone) is replaced as well: stage 6 reruns.
    (experiment / "ensemble").mkdir(exist_ok=True)
    (experiment / "ensemble" / "ensemble.yaml").write_text("old\n")
    assert run_main(export_main, ["ensemble", "--exp-dir", str(experiment)]) == 0
    assert (experiment / "ensemble" / "ensemble.yaml").read_text() != "old\n"


def test_a_data_dir_of_an_older_mtlser_is_rewritten_but_a_users_file_in_it_is_not(tmp_path):
    """A data dir written before mtlser listed its files (no .mtlser-written), with stage 1's text_phn in it:
    rerunning stage 0 after upgrading replaces it; a file no stage writes still stops the rewrite."""
    d = DataDir({"utt2spk": {"s1_a": "s1"}, "wav.scp": {"s1_a": "/x.wav"}, "text": {"s1_a": "A"},
                 "utt2emo": {"s1_a": "ang"}})
    out = tmp_path / "data" / "all"
    out.mkdir(parents=True)
    for name in ("utt2spk", "wav.scp", "text", "utt2emo", "spk2utt", "text_phn", "text_phncls"):
        (out / name).write_text("s1_a x\n")
    d.write(out)
    assert (out / WRITTEN_BY_MTLSER).is_file() and not (out / "text_phn").exists()
    assert (out / "utt2spk").read_text() == "s1_a s1\n"
    older = tmp_path / "data" / "older"
    older.mkdir()
    (older / "utt2spk").write_text("s1_a s1\n")
    (older / "notes.txt").write_text("mine\n")
    with pytest.raises(MtlserError, match=r"holds 1 file\(s\) that mtlser did not write \(notes.txt\)"):
        d.write(older)
    assert (older / "notes.txt").read_text() == "mine\n"
