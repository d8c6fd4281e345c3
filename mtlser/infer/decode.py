"""Decode a data dir (a fold's test set): every utterance of its wav.scp whole, as trained and as the paper
evaluates, into a decode dir (the files are named in mtlser.expdir; each written atomically).

Failed utterances (unreadable, shorter than the model's receptive field) do not stop the decode: the decode
dir's utt2error lists them and scoring counts them (mtlser.score.not_scored).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mtlser import expdir
from mtlser.data.datadir import read_table, sort_key
from mtlser.infer.audio import Recording
from mtlser.infer.runner import label
from mtlser.utils import MtlserError

logger = logging.getLogger("mtlser.infer")


def decode_data_dir(predictor, data_dir: Path, out: Path, batch_size: int = 16, batch_seconds: float = 60.0,
                    progress: bool = True) -> dict[str, str]:
    """Every utterance of a data dir's wav.scp, whole, into the decode dir ``out``; returns utt -> emotion."""
    scp = data_dir / "wav.scp"
    if not scp.is_file():
        raise MtlserError(f"{scp}: missing; is {data_dir} a data dir (the split writes the folds')?")
    wav_scp = read_table(scp)
    durations = None
    if (data_dir / "utt2dur").is_file():
        durations = {u: float(d) for u, d in read_table(data_dir / "utt2dur").items()}
    recordings = [Recording(u, wav_scp[u]) for u in sorted(wav_scp, key=sort_key)]
    done = label(predictor, recordings, window=0.0, batch_size=batch_size, batch_seconds=batch_seconds,
                 durations=durations, progress=progress, desc=f"decode {data_dir}")
    hyp, probs, text, errors, attrs = {}, {}, {}, {}, {}
    for d in done:
        utt = d.recording.id
        if d.error is not None:
            errors[utt] = " ".join(d.error.split())
            continue
        if predictor.emotions:  # a dimensional-only model: utt2attr_hyp only
            hyp[utt] = d.result["emotion"]
            probs[utt] = " ".join(f"{d.result['probs'][e]:.6f}" for e in predictor.emotions)
        if "attributes" in d.result:
            attrs[utt] = [d.result["attributes"][a.name] for a in predictor.attributes]
        if "tokens" in d.result:
            text[utt] = " ".join(d.result["tokens"])
    expdir.write_decode(out, data_dir, hyp if predictor.emotions else None, probs, text if predictor.tokens is not None else None, errors,
                        attrs if getattr(predictor, "attributes", None) else None)
    if errors:
        logger.warning("%d of %d utterances of %s could not be decoded: %s (they are listed there)", len(errors),
                       len(done), data_dir, out / expdir.UTT2ERROR)
    logger.info("decoded %d of %d utterances of %s into %s", len(hyp), len(done), data_dir, out)
    return hyp
