"""python -m mtlser.corpora.from_table: a CSV/TSV of files -> data dir, through the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import write_wav


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtlser.corpora.from_table", *args], cwd=cwd,
                          capture_output=True, text=True)


def _corpus(root: Path, rows: list[str], name: str = "corpus.csv", sep: str = ",") -> Path:
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        write_wav(root / "audio" / f"a{i}.wav", seconds=0.5, seed=i)
    table = root / name
    table.write_text(sep.join(["file", "emotion", "who", "words"]) + "\n" + "".join(r.replace(",", sep) + "\n"
                                                                                      for r in rows))
    return table


def test_csv_becomes_data_dir_with_relative_paths(tmp_path):
    table = _corpus(tmp_path / "db", ["audio/a0.wav,ang,s1,hello there", "audio/a1.wav,hap,s1,good day",
                                      "audio/a2.wav,sad,s2,oh no", "audio/a3.wav,xxx,s2,what"])
    work = tmp_path / "work"
    work.mkdir()
    r = _run(str(table), "data/all", "--emotions", "ang hap sad", "--path-col", "file", "--label-col", "emotion",
             "--speaker-col", "who", "--text-col", "words", cwd=work)
    assert r.returncode == 0, r.stderr
    data = work / "data" / "all"
    assert (data / "utt2emo").read_text() == "s1-a0 ang\ns1-a1 hap\ns2-a2 sad\n"
    assert (data / "emotions").read_text().split() == ["ang", "hap", "sad"]
    wav = dict(line.split(" ", 1) for line in (data / "wav.scp").read_text().splitlines())
    assert wav["s1-a0"] == str((tmp_path / "db" / "audio" / "a0.wav").resolve())
    assert (work / "data" / "local" / "corpus_prep" / "dropped").read_text() == "a3 label:xxx\n"


def test_label_differing_in_case_stops_with_file_line(tmp_path):
    table = _corpus(tmp_path, ["audio/a0.wav,ang,s1,hi", "audio/a1.wav,Hap ,s1,hi"], name="c.tsv", sep="\t")
    r = _run(str(table), str(tmp_path / "out"), "--emotions", "ang hap", "--path-col", "file", "--label-col",
             "emotion", "--speaker-col", "who", "--text-col", "words", cwd=tmp_path)
    assert r.returncode != 0
    assert (f"{table}:3: label 'Hap' differs from the inventory's 'hap' only in case or spacing; "
            "write it as 'hap' (or merge it in the label map)") in r.stderr
    assert not (tmp_path / "out").exists()


def test_missing_column_names_the_flag(tmp_path):
    table = _corpus(tmp_path, ["audio/a0.wav,ang,s1,hi"])
    r = _run(str(table), str(tmp_path / "out"), "--emotions", "ang hap", cwd=tmp_path)
    assert r.returncode != 0
    assert (f"{table}:1: no column 'path' (the path column; --path-col selects another); "
            "the header has: file emotion who words") in r.stderr
