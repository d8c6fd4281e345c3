"""ONNX export, the onnx/int8 and bf16 backends, predict_array, and timelines of long recordings."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mtlser.export.__main__ import main as export_main
from mtlser.export.hf import probe_signals
from mtlser.export.onnx import TOLERANCE, OnnxGraph, export_onnx
from mtlser.export.pack import make_ensemble, pack
from mtlser.infer import SERPredictor
from mtlser.infer.__main__ import main as infer_main
from mtlser.infer.backends import OnnxPredictor, agreement, native_bf16
from mtlser.infer.timeline import label_spans
from mtlser.utils import MtlserError, run_main
from tests.conftest import write_wav
from tests.shipping import BASE_SHAPED_BACKBONE, random_model_dir
from tests.test_export import fold_test_audio

pytest.importorskip("onnxruntime")


def _probs(predictor, wavs):
    return np.concatenate([predictor.predict_arrays([w])[0] for w in wavs])


def test_export_onnx_of_a_fold_passes_its_check_and_answers_as_mtlser(tiny_experiment, tmp_path):
    fold = tiny_experiment / "fold01"
    out = tmp_path / "fold01.onnx"
    assert run_main(export_main, ["onnx", "--model-dir", str(fold), "--out", str(out), "--tokens"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    wavs = fold_test_audio(fold)
    # The check ran on the fold's test files (found through decode_test/data_dir) and on the probes.
    assert report["check_set"]["n"] == len(wavs) > 0 and report["probes"]["n"] == 4
    assert report["max_abs_diff"] <= TOLERANCE and report["check_set"]["label_agreement"] == 1.0
    assert "max |dp|" in out.with_suffix(".md").read_text()
    torch_pred = SERPredictor.from_pretrained(fold)
    onnx_pred = SERPredictor.from_pretrained(out, backend="onnx")
    assert onnx_pred.emotions == torch_pred.emotions and onnx_pred.tokens == torch_pred.tokens
    # A padded batch (dynamic batch and time axes) answers as each input alone in mtlser.
    batch_p, batch_t = onnx_pred.predict_arrays(wavs + probe_signals(16000, onnx_pred.min_samples))
    ref = _probs(torch_pred, wavs + probe_signals(16000, torch_pred.min_samples))
    np.testing.assert_allclose(batch_p, ref, atol=TOLERANCE)
    assert batch_t[: len(wavs)] == torch_pred.predict_arrays(wavs)[1]


def test_onnx_ensemble_and_a_pack_are_one_graph_each(tiny_experiment, tmp_path):
    ens = make_ensemble(tiny_experiment, tmp_path / "ensemble")
    packed = pack(ens, tmp_path / "ensemble.zip")
    wavs = fold_test_audio(tiny_experiment / "fold02")
    ref = _probs(SERPredictor.from_pretrained(ens), wavs)
    result = export_onnx(packed, tmp_path / "ens.onnx", check_data=str(tiny_experiment.parents[1] / "wav"))
    assert result["members"] == 3 and result["check_set"]["n"] > 0
    np.testing.assert_allclose(SERPredictor.from_pretrained(tmp_path / "ens.onnx", backend="onnx")
                               .predict_arrays(wavs)[0], ref, atol=TOLERANCE)


@pytest.mark.parametrize("invariant,normalize", [(False, False), (True, True)])
def test_base_shaped_model_exports_exactly_whatever_its_cnn_padding_switch(tmp_path, invariant, normalize):
    """wav2vec2-base's 7-layer group-norm CNN, post-LN: each row's statistics are its own in the graph."""
    model = random_model_dir(tmp_path, {**BASE_SHAPED_BACKBONE, "padding_invariant_cnn": invariant,
                                        "normalize_waveform": normalize})
    result = export_onnx(model, tmp_path / "m.onnx")
    assert result["max_abs_diff"] <= TOLERANCE and result["check_set"]["n"] == 0  # a bare dir: probes only
    assert "none" in result["check_set"]["source"]


def test_layer_norm_cnn_with_conv_bias_exports_exactly_and_int8_quantises_the_transformer_only(tmp_path):
    """wav2vec2-large's CNN (a layer norm in every layer, convolutions with bias), as the base test above, is
    exact within the export's check; int8 quantises the transformer's and the projection's matrix products and
    leaves the CNN's convolutions and the emotion head in fp32 (quantised, they changed a trained model's labels)."""
    import onnx

    from mtlser.infer.backends import quantize_int8

    large_cnn = {**BASE_SHAPED_BACKBONE["custom"], "extractor_mode": "layer_norm", "extractor_conv_bias": True,
                 "encoder_layer_norm_first": True}
    model = random_model_dir(tmp_path, {**BASE_SHAPED_BACKBONE, "custom": large_cnn})
    result = export_onnx(model, tmp_path / "m.onnx")
    assert result["max_abs_diff"] <= TOLERANCE
    graph = (tmp_path / "m.onnx").read_bytes()
    convs = sum(n.op_type == "Conv" for n in onnx.load_from_string(graph).graph.node)
    assert convs == 7 + 1  # the CNN's layers and the positional convolution
    int8 = onnx.load_from_string(quantize_int8(graph))
    assert sum(n.op_type == "Conv" for n in int8.graph.node) == convs
    quantised = [n.name for n in int8.graph.node if n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger")]
    assert len(quantised) >= 3 * 6 + 1 and not any("head" in name for name in quantised)
    assert any("emotion_head" in n.name and n.op_type in ("Gemm", "MatMul") for n in int8.graph.node)


def test_attribute_heads_are_graph_outputs_checked_like_the_probabilities(tmp_path, monkeypatch, capsys):
    """A model with an attribute head: the graph outputs the attribute values beside the probabilities, the
    export's check compares them (absolute, on their scales), and --backend onnx returns them as torch does."""
    from mtlser.data.attributes import Attribute

    model = random_model_dir(tmp_path, BASE_SHAPED_BACKBONE, attributes=[Attribute("arousal", 1, 7),
                                                                         Attribute("valence", -1, 1)])
    audio = tmp_path / "model_data" / "wav"
    out = tmp_path / "attr.onnx"
    assert run_main(export_main, ["onnx", "--model-dir", str(model), "--out", str(out), "--check-data",
                                  str(audio)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["attributes"] == ["arousal", "valence"] and report["max_abs_diff"] <= TOLERANCE
    for part in ("probes", "check_set"):
        assert report[part]["n"] > 0
        assert report[part]["attributes_max_abs_diff_single"] <= report[part]["max_abs_diff_single"] <= TOLERANCE
        assert report[part]["attributes_max_abs_diff_padded_batch"] <= TOLERANCE
    assert "arousal, valence" in out.with_suffix(".md").read_text()
    torch_pred = SERPredictor.from_pretrained(model)
    onnx_pred = SERPredictor.from_pretrained(out, backend="onnx")
    assert onnx_pred.attributes == torch_pred.attributes
    wavs = [sf.read(p, dtype="float32")[0] for p in sorted(audio.glob("*.wav"))] + \
        probe_signals(16000, onnx_pred.min_samples)
    ref = np.concatenate([torch_pred.predict_all([w])[2] for w in wavs])
    # values inside the scales and varying between inputs: the comparison is not of clamped constants
    assert ((ref > [1, -1]) & (ref < [7, 1])).all() and (ref.std(axis=0) > 1e-3).all()
    np.testing.assert_allclose(onnx_pred.predict_all(wavs)[2], ref, atol=TOLERANCE)  # one padded batch
    capsys.readouterr()
    first = sorted(audio.glob("*.wav"))[0]
    assert infer_main(["--model", str(out), "--backend", "onnx", str(first), "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert [record["attributes"][a] for a in ("arousal", "valence")] == pytest.approx(ref[0].tolist(), abs=TOLERANCE)
    # int8 of the same graph keeps the output and states its attribute difference
    check = agreement(OnnxPredictor.open(model, precision="int8"), torch_pred, wavs)
    assert 0 < check["attributes_max_abs_diff"] < 0.5
    # the check is real: a graph whose attribute values are off by 1e-3 is refused, nothing written
    real = OnnxGraph.attributes_of
    monkeypatch.setattr(OnnxGraph, "attributes_of", staticmethod(lambda m, pooled: real(m, pooled) + 1e-3))
    out2 = tmp_path / "off.onnx"
    assert run_main(export_main, ["onnx", "--model-dir", str(model), "--out", str(out2)]) == 1
    assert "probabilities and attribute values are up to 1.00e-03" in capsys.readouterr().err
    assert not any(p.name.startswith("off.") for p in tmp_path.iterdir())


def test_export_refuses_a_graph_that_drifts_with_padding(tiny_experiment, tmp_path, monkeypatch, capsys):
    """The check is real: with the batch's statistics in the CNN norm (transformers' way) the padded
    batches drift, and nothing is written."""
    monkeypatch.setattr(OnnxGraph, "masked_group_norm", staticmethod(lambda x, lens, norm: norm(x)))
    out = tmp_path / "x.onnx"
    assert run_main(export_main, ["onnx", "--model-dir", str(tiny_experiment / "fold01"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime's probabilities are up to" in err and "nothing was written" in err
    assert not list(tmp_path.iterdir())


def test_without_onnxruntime_the_error_says_what_to_install(tiny_experiment, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert run_main(export_main, ["onnx", "--model-dir", str(tiny_experiment / "fold01"),
                                  "--out", str(tmp_path / "x.onnx")]) == 1
    assert "pip install 'mtlser[onnx]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_onnx_int8_labels_a_folder_and_prints_its_agreement_with_fp32(tiny_experiment, tmp_path, capsys):
    fold = tiny_experiment / "fold01"
    audio = tiny_experiment.parents[1] / "wav"
    out = tmp_path / "labels.jsonl"
    assert infer_main(["--model", str(fold), "--backend", "onnx", "--precision", "int8", str(audio),
                       "-o", str(out), "--no-progress"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "vs fp32" in line]
    assert len(said) == 1 and "onnx int8 vs fp32 on" in said[0] and "labels equal on" in said[0]
    assert str(Path((fold / "decode_test" / "data_dir").read_text().strip())) in said[0]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(list(audio.glob("*.wav"))) and all("emotion" in r for r in rows)
    # int8 is close to fp32 but not the same computation.
    wavs = fold_test_audio(fold)
    int8 = SERPredictor.from_pretrained(fold, backend="onnx", precision="int8")
    check = agreement(int8, SERPredictor.from_pretrained(fold), wavs)
    assert 0 < check["max_abs_diff"] < 0.05 and check["n"] == len(wavs)


def test_modes_that_cannot_run_are_refused_in_one_line(tiny_experiment, tmp_path, monkeypatch, capsys):
    fold, wav = str(tiny_experiment / "fold01"), str(write_wav(tmp_path / "a.wav", 0.5))
    assert run_main(infer_main, ["--model", fold, "--precision", "int8", wav]) == 1
    assert "int8 is onnxruntime's: --backend onnx" in capsys.readouterr().err
    monkeypatch.setattr("mtlser.infer.modes.native_bf16", lambda: (False, "no avx512_bf16/amx_bf16 here"))
    assert run_main(infer_main, ["--model", fold, "--precision", "bf16", wav]) == 1
    assert "no native bf16 (no avx512_bf16/amx_bf16 here)" in capsys.readouterr().err


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    with_amx = tmp_path / "a"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n")
    without = tmp_path / "b"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert native_bf16(str(with_amx)) == (True, f"{with_amx} flags amx_bf16")
    assert native_bf16(str(without))[0] is False and native_bf16(str(tmp_path / "none"))[0] is False


def test_predict_array_takes_any_rate_and_channels_as_predict_file(tiny_experiment, tmp_path):
    fold = tiny_experiment / "fold01"
    rng = np.random.default_rng(3)
    stereo = (0.2 * rng.standard_normal((int(1.3 * 22050), 2))).astype(np.float32)
    path = tmp_path / "s.wav"
    sf.write(path, stereo, 22050, subtype="FLOAT")
    for predictor in (SERPredictor.from_pretrained(fold), OnnxPredictor.open(fold)):
        a, b = predictor.predict_array(stereo, 22050), predictor.predict_file(path)
        assert a["emotion"] == b["emotion"] and a.get("tokens") == b.get("tokens")
        np.testing.assert_allclose([a["probs"][e] for e in predictor.emotions],
                                   [b["probs"][e] for e in predictor.emotions], atol=1e-6)
    with pytest.raises(MtlserError, match="needs at least"):
        predictor.predict_array(np.zeros(10, np.float32), 16000)


def test_timeline_of_a_long_recording_reads_windows_only(tiny_experiment, tmp_path, monkeypatch):
    """--timeline writes CSV + PNG per windowed recording; a long file is read window by window, never whole."""
    fold = tiny_experiment / "fold01"
    long_wav = write_wav(tmp_path / "long.wav", 7.3, seed=5)
    short_wav = write_wav(tmp_path / "short.wav", 0.9, seed=6)
    reads = []
    real_read = sf.read

    def spy(path, *args, **kw):
        reads.append((Path(path).name, kw.get("start", 0), kw.get("stop")))
        return real_read(path, *args, **kw)

    monkeypatch.setattr(sf, "read", spy)
    out, tl = tmp_path / "labels.jsonl", tmp_path / "timeline"
    assert infer_main(["--model", str(fold), str(long_wav), str(short_wav), "--window", "2", "--hop", "1",
                       "--timeline", str(tl), "-o", str(out), "--no-progress"]) == 0
    long_reads = [(a, b) for name, a, b in reads if name == "long.wav"]
    assert long_reads and all(b is not None and b - a <= 2 * 16000 for a, b in long_reads)
    record = json.loads(out.read_text().splitlines()[0])
    rows = list(csv.DictReader((tl / "long.wav.csv").open()))
    assert len(rows) == len(record["windows"]) == 7 and rows[-1]["end"] == "7.300"
    assert [r["emotion"] for r in rows] == [w["emotion"] for w in record["windows"]]
    assert float(rows[0]["p_ang"]) == pytest.approx(record["windows"][0]["probs"]["ang"], abs=1e-6)
    assert (tl / "long.wav.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The short one has no windows; the list of what mtlser wrote (mtlser.utils.fileio.atomic_dir).
    assert sorted(p.name for p in tl.iterdir()) == [".mtlser-written", "long.wav.csv", "long.wav.png"]
    spans = label_spans(record["windows"], record["duration"])
    assert spans[0][0] == 0 and spans[-1][1] == record["duration"]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_bf16_runs_the_backbone_in_bf16_and_the_fusion_pooling_and_heads_in_fp32(tmp_path):
    """Under autocast, SERModel.predict gives the heads fp32 inputs (bf16-rounded logits flipped close labels):
    the transformer's matrix products run in bf16, the fusion's output and every head's input are fp32, and
    the answer is nearer fp32's than with the whole model under autocast."""
    import torch

    from mtlser.data.attributes import Attribute

    model = SERPredictor.from_pretrained(random_model_dir(tmp_path, BASE_SHAPED_BACKBONE,
                                                          attributes=[Attribute("arousal", 1, 5)])).models[0]
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (getattr(inputs[0], "dtype", None) if inputs else None, output.dtype)
        return hook

    for name in ("emotion_head", "ctc_head", "attr_head", "fusion"):
        getattr(model, name).register_forward_hook(record(name))
    linear = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(record("backbone_linear"))
    wavs = torch.from_numpy(np.stack(probe_signals(16000, 400)[2:3])).float()
    lens = torch.tensor([wavs.shape[1]])
    with torch.inference_mode():
        ref = model.predict(wavs, lens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.predict(wavs, lens)
    assert seen["backbone_linear"][1] == torch.bfloat16
    assert seen["fusion"][1] == torch.float32
    assert all(seen[h][0] == torch.float32 for h in ("emotion_head", "ctc_head", "attr_head"))
    for key in ("emo_probs", "ctc_log_probs", "attributes"):
        assert out[key].dtype == torch.float32 and torch.isfinite(out[key]).all()
    assert float((out["emo_probs"] - ref["emo_probs"]).abs().max()) < 0.05


def test_onnx_runs_a_long_batch_in_pieces_with_the_same_answers(tiny_experiment, monkeypatch):
    """A batch of more padded audio than backends.RUN_SECONDS runs in consecutive pieces (each row's answer
    does not depend on its batch mates in the graph): the same probabilities and class tokens, in input order."""
    import mtlser.infer.backends as backends

    fold = tiny_experiment / "fold01"
    onnx_pred = SERPredictor.from_pretrained(fold, backend="onnx")
    wavs = fold_test_audio(fold) + probe_signals(16000, onnx_pred.min_samples)
    monkeypatch.setattr(backends, "RUN_SECONDS", 1e6)
    whole_p, whole_t, _ = onnx_pred.predict_all(wavs)
    monkeypatch.setattr(backends, "RUN_SECONDS", 1.0)
    assert len(backends.run_chunks([len(w) for w in wavs], 16000)) > 2
    piece_p, piece_t, _ = onnx_pred.predict_all(wavs)
    np.testing.assert_allclose(piece_p, whole_p, atol=TOLERANCE)
    assert piece_t == whole_t and len(piece_t) == len(wavs)


def test_run_chunks_caps_each_piece_at_its_padded_samples():
    from mtlser.infer.backends import run_chunks

    assert run_chunks([10, 10, 10, 30, 5], 30) == [[0, 1, 2], [3], [4]]
    assert run_chunks([40, 1], 30) == [[0], [1]]  # a row longer than the cap runs alone
    assert run_chunks([], 30) == []


def test_bf16_on_a_cpu_computes_with_a_bf16_twin_and_leaves_the_fp32_model_as_it_was(tmp_path):
    """torch bf16 on a CPU runs a copy of each model made for it (Backbone.bf16_inference: prepacked bf16 linear
    layers, the CNN and the positional conv as bf16 matrix products): answers near fp32's (this model's
    positional conv, 8 channels per group, is a shape oneDNN's bf16 grouped conv got wrong: 0.09 here), padded
    rows as each row alone, and the fp32 model (agreement's reference) keeps its weights and answers."""
    import torch

    from mtlser.model.fast_ops import PackedLinear, PosConvAsMatmuls

    fp32 = SERPredictor.from_pretrained(random_model_dir(tmp_path, BASE_SHAPED_BACKBONE))
    model = fp32.models[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wavs = probe_signals(16000, fp32.min_samples)[:4]
    ref, ref_tokens, _ = fp32.predict_all(wavs)
    bf16 = SERPredictor(fp32.models, fp32.metas, "cpu", "bf16")
    got, _, _ = bf16.predict_all(wavs)
    twin = bf16._computing(0)
    assert twin is not model and twin.backbone.cnn_matrices is not None
    assert any(isinstance(m, PackedLinear) and m.dtype == torch.bfloat16 for m in twin.backbone.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in twin.backbone.modules())
    assert isinstance(twin.backbone.model.encoder.transformer.pos_conv_embed, PosConvAsMatmuls)
    assert float(np.abs(got - ref).max()) < 0.02
    # The original: same weights, same answers (a deep copy shares a parametrized module's class with it).
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    again, again_tokens, _ = fp32.predict_all(wavs)
    assert np.array_equal(again, ref) and again_tokens == ref_tokens
    # The twin's CNN on a padded batch: each row as alone (the padding-invariant CNN's contract).
    lens = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(len(wavs), int(lens.max()))
    for i, w in enumerate(wavs):
        batch[i, :len(w)] = torch.from_numpy(w)
    with torch.inference_mode():
        feats, frame_lens = twin.backbone.cnn(batch, lens)
        for i, n in enumerate(lens.tolist()):
            alone, _ = twin.backbone.cnn(batch[i:i + 1, :n], None)
            assert torch.equal(feats[i, :int(frame_lens[i])], alone[0])
            assert not feats[i, int(frame_lens[i]):].any()
