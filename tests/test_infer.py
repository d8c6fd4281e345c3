"""Inference: the CLI on folders of mixed audio, per-file errors, windows, formats; stage 4's data-dir decode."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from mtlser.data.datadir import read_table, write_table
from mtlser.infer import SERPredictor
from mtlser.infer.__main__ import main
from mtlser.infer.decode import decode_data_dir
from mtlser.infer.output import EXIT_SOME_FAILED
from mtlser.infer.audio import find_recordings, windows
from mtlser.model import lengths
from mtlser.utils import run_main

ROOT = Path(__file__).resolve().parents[1]


def signal(seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * (100 + 50 * rng.random()) * t * (1 + 0.2 * t)) + 0.03 * rng.standard_normal(n)
    x = x.astype(np.float32)
    return np.stack([x, 0.5 * x[::-1]], axis=1) if channels == 2 else x


def reference(predictor: SERPredictor, path: Path, start: float = 0.0, end: float | None = None) -> dict:
    """What the model says for a file read the plain way: soundfile, channel mean, torchaudio's resample."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wav = data.mean(axis=1)
    if rate != predictor.sample_rate:
        wav = AF.resample(torch.from_numpy(wav), rate, predictor.sample_rate).numpy()
    a = int(round(start * predictor.sample_rate))
    wav = wav[a: None if end is None else int(round(end * predictor.sample_rate))]
    return predictor.predict_batch([wav])[0]


@pytest.fixture(scope="module")
def fold01(tiny_experiment):
    return tiny_experiment / "fold01"


@pytest.fixture(scope="module")
def predictor(fold01):
    return SERPredictor.from_pretrained(fold01)


@pytest.fixture
def mixed_folder(tmp_path):
    """WAV and FLAC, 8 / 16 / 22.05 / 44.1 kHz, mono and stereo, in nested folders, with things that are not audio."""
    d = tmp_path / "recordings"
    (d / "day 2").mkdir(parents=True)
    sf.write(d / "a.wav", signal(1.3, 16000, 1), 16000)
    sf.write(d / "b.flac", signal(2.1, 44100, 2, channels=2), 44100)
    sf.write(d / "day 2" / "c.wav", signal(0.9, 8000, 3, channels=2), 8000, subtype="PCM_16")
    sf.write(d / "day 2" / "d.flac", signal(1.7, 22050, 4), 22050)
    (d / "notes.txt").write_text("not audio\n")
    (d / ".DS_Store").write_bytes(b"\0\1")
    return d


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_cli_labels_a_folder_of_mixed_rate_stereo_and_mono_wav_and_flac(fold01, predictor, mixed_folder, capsys):
    code, out = run_cli(capsys, "--model", str(fold01), str(mixed_folder), "--no-progress")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    names = [os.path.relpath(r["file"], mixed_folder) for r in records]
    assert names == ["a.wav", "b.flac", "day 2/c.wav", "day 2/d.flac"]  # recursive, sorted, audio only
    for r in records:
        assert set(predictor.emotions) == set(r["probs"]) and abs(sum(r["probs"].values()) - 1) < 1e-5
        assert r["emotion"] == max(r["probs"], key=r["probs"].get)
        ref = reference(predictor, Path(r["file"]))
        assert max(abs(r["probs"][e] - ref["probs"][e]) for e in predictor.emotions) < 1e-5
        assert r["tokens"] == ref["tokens"]
    assert records[1]["duration"] == pytest.approx(2.1, abs=1e-3)


def test_batched_inference_equals_one_file_at_a_time(predictor):
    """Padding a batch does not change an utterance's answer (padding-invariant CNN, masked attention)."""
    wavs = [signal(s, 16000, i) for i, s in enumerate((0.3, 1.0, 2.7, 0.05))]
    together = predictor.predict_arrays(wavs)[0]
    alone = np.concatenate([predictor.predict_arrays([w])[0] for w in wavs])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    # The batched CNN (GPUs) and the CPU's CNN one utterance at a time give the same answers.
    lens = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(len(wavs), int(lens.max()))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = torch.from_numpy(w)
    batched_cnn = predictor.model.predict(batch, lens)["emo_probs"].numpy()
    np.testing.assert_allclose(batched_cnn, together, atol=1e-5)


def test_minimum_length_is_the_receptive_field_of_the_model_cnn(fold01, predictor, tmp_path, capsys):
    spec = predictor.model.backbone.conv_spec
    rf = lengths.receptive_field(spec)
    assert predictor.min_samples == rf != 400  # the mini CNN's own, not wav2vec2's 25 ms
    assert int(lengths.num_frames(rf, spec)) == 1 and int(lengths.num_frames(rf - 1, spec)) == 0
    sf.write(tmp_path / "just.wav", signal(1, 16000, 5)[:rf], 16000, subtype="FLOAT")
    sf.write(tmp_path / "under.wav", signal(1, 16000, 5)[: rf - 1], 16000, subtype="FLOAT")
    code, out = run_cli(capsys, "--model", str(fold01), str(tmp_path / "just.wav"), str(tmp_path / "under.wav"))
    just, under = (json.loads(line) for line in out.splitlines())
    assert code == EXIT_SOME_FAILED
    assert "emotion" in just and "error" not in just
    assert under["error"].startswith(f"too short: {rf - 1} samples") and f"at least {rf}" in under["error"]


def test_unreadable_missing_and_short_files_get_an_error_each_and_the_rest_completes(fold01, mixed_folder, tmp_path,
                                                                                      capsys):
    (mixed_folder / "broken.wav").write_bytes(b"RIFF\x10\0\0\0WAVEjunk")  # a header and nothing else
    sf.write(mixed_folder / "blip.wav", signal(0.005, 16000, 9), 16000)  # 5 ms
    out_file = tmp_path / "labels.jsonl"
    code, _ = run_cli(capsys, "--model", str(fold01), str(mixed_folder), str(tmp_path / "nowhere.wav"),
                      "--output", str(out_file))
    assert code == EXIT_SOME_FAILED
    records = {Path(r["file"]).name: r for r in map(json.loads, out_file.read_text().splitlines())}
    assert set(records) == {"a.wav", "b.flac", "c.wav", "d.flac", "broken.wav", "blip.wav", "nowhere.wav"}
    assert records["broken.wav"]["error"].startswith("cannot read audio")
    assert records["blip.wav"]["error"].startswith("too short: 80 samples")
    assert records["nowhere.wav"]["error"] == "not found"
    assert all("emotion" in records[n] for n in ("a.wav", "b.flac", "c.wav", "d.flac"))


def test_nan_or_inf_audio_gets_an_error_record_never_a_label(fold01, tmp_path, capsys):
    d = tmp_path / "rec"
    d.mkdir()
    sf.write(d / "good.wav", signal(1.0, 16000, 5), 16000)
    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        wav = signal(1.0, 16000, 6)
        wav[100] = bad
        sf.write(d / name, wav, 16000, subtype="FLOAT")
    out_file = tmp_path / "labels.jsonl"
    code, _ = run_cli(capsys, "--model", str(fold01), str(d), "--output", str(out_file), "--no-progress")
    assert code == EXIT_SOME_FAILED
    text = out_file.read_text()

    def strict(line):  # bare NaN/Infinity are not JSON
        return json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON lines: {line}"))

    records = {Path(r["file"]).name: r for r in map(strict, text.splitlines())}
    for name in ("nan.wav", "inf.wav"):
        assert records[name]["error"] == "audio holds NaN or infinite samples" and "emotion" not in records[name]
    assert "emotion" in records["good.wav"]


def test_device_cuda_without_a_gpu_is_one_line(fold01, mixed_folder, monkeypatch, capsys):
    from mtlser.utils import run_main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    assert run_main(main, ["--model", str(fold01), str(mixed_folder), "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--device asks for cuda but no GPU is visible; use --device cpu" in err


def test_long_recordings_are_labelled_in_windows(fold01, predictor, tmp_path, capsys):
    assert windows(45.0, 20.0, 10.0) == [(0.0, 20.0), (10.0, 30.0), (20.0, 40.0), (25.0, 45.0)]
    assert windows(12.0, 20.0, 10.0) == [(0.0, 12.0)] and windows(45.0, 0.0, 0.0) == [(0.0, 45.0)]
    path = tmp_path / "meeting.flac"
    sf.write(path, signal(45.0, 16000, 7), 16000)
    code, out = run_cli(capsys, "--model", str(fold01), str(path), "--window", "20", "--hop", "10",
                        "--batch-seconds", "40")
    (r,) = map(json.loads, out.splitlines())
    assert code == 0 and [(w["start"], w["end"]) for w in r["windows"]] == windows(45.0, 20.0, 10.0)
    for w in r["windows"]:
        ref = reference(predictor, path, w["start"], w["end"])
        assert max(abs(w["probs"][e] - ref["probs"][e]) for e in predictor.emotions) < 1e-5
    mean = {e: np.mean([w["probs"][e] for w in r["windows"]]) for e in predictor.emotions}
    assert r["probs"] == pytest.approx(mean, abs=1e-6) and r["emotion"] == max(mean, key=mean.get)
    assert "tokens" not in r  # per window only: overlapping windows would repeat tokens
    code, out = run_cli(capsys, "--model", str(fold01), str(path), "--window", "0")  # whole
    assert "windows" not in json.loads(out)


def test_list_files_and_a_wav_scp_alone(fold01, mixed_folder, tmp_path, capsys):
    lst = tmp_path / "lists" / "batch1.txt"
    lst.parent.mkdir()
    lst.write_text(f"# recordings of day 1\n../recordings/a.wav\n\n{mixed_folder / 'b.flac'}\n")
    scp = tmp_path / "wav.scp"
    write_table(scp, {"utt_b": str(mixed_folder / "b.flac"), "utt_c": str(mixed_folder / "day 2" / "c.wav")})
    code, out = run_cli(capsys, "--model-dir", str(fold01), str(lst), str(scp), "--format", "utt2emo")
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert [r[0] for r in rows] == [str(lst.parent / "../recordings/a.wav"), str(mixed_folder / "b.flac"),
                                    "utt_b", "utt_c"]
    assert [r.id for r in find_recordings([str(scp)])] == ["utt_b", "utt_c"]  # no utt2emo needed


def test_wav_scp_pipes_run_only_with_allow_pipes(fold01, mixed_folder, tmp_path, capsys):
    from mtlser.utils import run_main

    marker = tmp_path / "ran"
    scp = tmp_path / "wav.scp"
    scp.write_text(f"utt_a {mixed_folder / 'a.wav'}\nutt_p touch {marker}; cat {mixed_folder / 'a.wav'} |\n")
    assert run_main(main, ["--model", str(fold01), str(scp), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{scp}:2: 'utt_p' is a command" in err and "--allow-pipes" in err
    assert not marker.exists()  # nothing was run
    code, out = run_cli(capsys, "--model", str(fold01), str(scp), "--allow-pipes", "--no-progress")
    a, p = map(json.loads, out.splitlines())
    assert code == 0 and marker.exists() and (a["id"], p["id"]) == ("utt_a", "utt_p")
    assert p["probs"] == pytest.approx(a["probs"], abs=1e-6)  # the pipe gave the same audio


def test_csv_output_and_utt2emo_refuses_ids_with_spaces(fold01, predictor, mixed_folder, tmp_path, capsys):
    out_csv = tmp_path / "labels.csv"
    code, _ = run_cli(capsys, "--model", str(fold01), str(mixed_folder), str(tmp_path / "gone.flac"),
                      "--output", str(out_csv))
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert code == EXIT_SOME_FAILED and len(rows) == 5
    assert list(rows[0]) == ["id", "file", "duration", "emotion", *[f"p_{e}" for e in predictor.emotions], "error"]
    assert rows[-1]["error"] == "not found" and rows[0]["emotion"] in predictor.emotions
    with pytest.raises(Exception, match="cannot contain spaces"):
        main(["--model", str(fold01), str(mixed_folder / "day 2"), "--format", "utt2emo"])


def test_stage4_decodes_the_rest_and_lists_failures_in_utt2error(tiny_experiment, tmp_path):
    """A too-short and an unreadable test utterance no longer abort the fold's decode (issue 13, item 5)."""
    test = tmp_path / "test"
    shutil.copytree((tiny_experiment / "fold01" / "decode_test" / "data_dir").read_text().strip(), test)
    scp = read_table(test / "wav.scp")
    good = sorted(scp)
    sf.write(tmp_path / "tiny.wav", signal(0.01, 16000, 3), 16000)
    (tmp_path / "trunc.wav").write_bytes(b"RIFF\x10\0\0\0WAVEfmt ")
    scp.update({"Ses01F_zz_short": str(tmp_path / "tiny.wav"), "Ses01F_aa_broken": str(tmp_path / "trunc.wav")})
    write_table(test / "wav.scp", scp)
    ref = read_table(test / "utt2emo")
    first = ref[good[0]]
    for extra in ("Ses01F_zz_short", "Ses01F_aa_broken"):  # test utterances with labels, as a corpus gives them
        ref[extra] = first
    write_table(test / "utt2emo", ref)
    (test / "utt2dur").unlink()  # durations are probed when utt2dur is absent
    out = tmp_path / "decode"
    assert main(["--model", str(tiny_experiment / "fold01"), "--data-dir", str(test), "--out", str(out)]) == 0
    assert sorted(read_table(out / "utt2emo_hyp")) == good
    assert sorted(read_table(out / "emo_probs")) == good
    errors = (out / "utt2error").read_text().splitlines()
    assert [line.split()[0] for line in errors] == ["Ses01F_aa_broken", "Ses01F_zz_short"]  # sorted, C order
    assert "cannot read audio" in errors[0] and "too short: 160 samples" in errors[1]
    assert (out / "data_dir").read_text().strip() == str(test.resolve())
    # Stage 5 scores the rest and counts the two (issue 13: a 10 ms utterance no longer sinks the fold).
    from mtlser.score.fold import score_fold

    result = score_fold(out)
    assert result["n"] == len(good) and result["not_scored"] == 2
    assert result["not_scored_utts"]["Ses01F_zz_short"].startswith("too short: 160 samples")
    assert f"NOT SCORED: 2 of {len(good) + 2} test utterances" in (out / "result.txt").read_text()
    write_table(test / "utt2emo", {u: ref[u] for u in good})
    # Fixed data: decoded again, no stale utt2error left behind.
    write_table(test / "wav.scp", {u: scp[u] for u in good})
    decode_data_dir(SERPredictor.from_pretrained(tiny_experiment / "fold01"), test, out, progress=False)
    assert not (out / "utt2error").exists()


def test_console_module_in_a_fresh_process(tiny_experiment, mixed_folder, tmp_path):
    """`python -m mtlser.infer` as a user runs it (no path.sh): exit status 3 names the failure on stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "mtlser.infer", "--model", str(tiny_experiment / "fold02"),
                        str(mixed_folder / "a.wav"), str(tmp_path / "missing.wav")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == EXIT_SOME_FAILED, r.stderr[-2000:]
    assert "missing.wav: not found" in r.stderr and len(r.stdout.splitlines()) == 2


def test_a_model_that_is_not_there_is_one_clear_line(tmp_path, capsys):
    assert run_main(main, ["--model", str(tmp_path / "nope"), "x.wav"]) == 1
    err = capsys.readouterr().err
    assert "nope: not found; give a model dir" in err and "Traceback" not in err
    (tmp_path / "notes.zip").write_text("not a zip\n")
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("README.md", "some other zip\n")
    for name, says in (("notes.zip", "neither a model dir nor a zip"), ("other.zip", "other.zip:model.yaml: missing")):
        assert run_main(main, ["--model", str(tmp_path / name), "x.wav"]) == 1
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
