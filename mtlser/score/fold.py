"""Score one fold's decode dir against its references: WA, UA, per-class recall and precision, the
confusion matrix and the CTC token error rate, into the decode dir's result.txt and result.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mtlser import expdir
from mtlser.data.datadir import read_table
from mtlser.data.emotions import NO_CLASS
from mtlser.score import not_scored
from mtlser.score.attributes import f1_scores, score_attributes
from mtlser.score.attributes import result_lines as attr_result_lines
from mtlser.score.metrics import (
    confusion_matrix,
    edit_distance,
    per_class_precision,
    per_class_recall,
    unweighted_accuracy,
    weighted_accuracy,
)
from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_write_text

logger = logging.getLogger("mtlser.score")


def _emotions_of(decode_dir: Path, ref_dir: Path) -> list[str]:
    """The model's classes (model.yaml beside the decode dir), else the reference data dir's inventory."""
    info = expdir.read_model_info(decode_dir.parent)
    if info is not None:
        return list(info["emotions"])
    from mtlser.data.emotions import read_inventory

    return read_inventory(ref_dir)


def _token_type_of(decode_dir: Path) -> str:
    """The CTC target set the model was trained on (its config's data.token_type), for the token error rate."""
    config = expdir.read_config(decode_dir.parent)
    if config is not None:
        return str(config.get("data", {}).get("token_type", "phncls"))
    return "phncls"


def check_references(ref: dict[str, str], emotions: list[str], path: Path) -> None:
    """The reference labels can be scored: at least one utterance, every label in the model's emotion list."""
    if not ref:
        raise MtlserError(f"{path}: no utterances; an empty test set has no WA or UA. Check the fold's test "
                          "set (split) or pass the --ref-dir that was decoded")
    index = set(emotions)
    for lineno, (u, label) in enumerate(ref.items(), 1):  # read_table keeps the file's order, one key a line
        if label not in index:
            raise MtlserError(f"{path}:{lineno}: '{u}' has reference label '{label}', which is not one of the "
                              f"model's emotions {emotions} (model.yaml); score with the data the model was "
                              "trained for, or merge/drop that label when preparing the data")


def check_hypotheses(ref: dict[str, str], hyp: dict[str, str], ref_path: Path, hyp_path: Path) -> None:
    """Every reference utterance has a hypothesis and every hypothesis a reference; both sides named."""
    missing = sorted(set(ref) - set(hyp))
    extra = sorted(set(hyp) - set(ref))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference utterance(s) without a hypothesis, e.g. {missing[:3]}")
        if extra:
            parts.append(f"{len(extra)} hypothesis utterance(s) not in the references, e.g. {extra[:3]}")
        raise MtlserError(f"{hyp_path}: utterances differ from {ref_path}: {'; '.join(parts)}; decode "
                          "that data dir again (or pass the --ref-dir that was decoded)")


def absent_classes(cm: np.ndarray, emotions: list[str]) -> list[str]:
    """Classes with no reference utterance in a fold: no recall, and left out of its UA."""
    return [e for e, n in zip(emotions, cm.sum(axis=1)) if n == 0]


def score_fold(decode_dir: str | Path, ref_dir: str | Path | None = None, token_type: str | None = None) -> dict:
    decode_dir = Path(decode_dir)
    if not (decode_dir / expdir.UTT2EMO_HYP).is_file():
        raise MtlserError(f"{decode_dir}: not decoded (no {expdir.UTT2EMO_HYP}); decode it first (python -m "
                          "mtlser.infer, the recipe's stage 4)")
    token_type = token_type or _token_type_of(decode_dir)
    if ref_dir is None:
        ref_dir = expdir.decoded_data_dir(decode_dir)
        if ref_dir is None:
            raise MtlserError(f"{decode_dir}: no {expdir.DATA_DIR_POINTER} file (a decode cut short, or one of an "
                              "older mtlser); decode it again (the recipe's stage 4), or give the data dir that was "
                              "decoded (--ref-dir; local/score.sh's second argument)")
    ref_dir = Path(ref_dir)
    emotions = _emotions_of(decode_dir, ref_dir)
    if not emotions:
        return score_attributes_only(decode_dir, ref_dir)
    ref_all = read_table(ref_dir / "utt2emo")
    # An utterance with no class ('-', kept for its attributes) is in the attribute figures only.
    ref = {u: e for u, e in ref_all.items() if e != NO_CLASS}
    hyp = read_table(decode_dir / expdir.UTT2EMO_HYP)
    errors = not_scored.read_utt2error(decode_dir, hyp)  # utterances the decode could not decode
    check_references(ref, emotions, ref_dir / "utt2emo")
    # An utterance the decode listed in utt2error counts as answered: it is reported, not scored.
    check_hypotheses(ref_all, {**hyp, **errors}, ref_dir / "utt2emo", decode_dir / expdir.UTT2EMO_HYP)
    index = {e: i for i, e in enumerate(emotions)}
    utts = sorted(u for u in ref if u not in errors)
    if not utts:
        raise MtlserError(f"{decode_dir}: none of the {len(ref)} test utterances could be decoded (see "
                          f"{decode_dir / not_scored.UTT2ERROR}); nothing to score")
    for lineno, (u, label) in enumerate(hyp.items(), 1):
        if label not in index:
            raise MtlserError(f"{decode_dir / expdir.UTT2EMO_HYP}:{lineno}: '{u}' has unknown label '{label}', not one "
                              f"of the model's emotions {emotions}; decode again with this model")
    cm = confusion_matrix([index[ref[u]] for u in utts], [index[hyp[u]] for u in utts], len(emotions))
    result = {
        "n": len(utts),
        "wa": weighted_accuracy(cm),
        "ua": unweighted_accuracy(cm),
        "recall": {e: _f(r) for e, r in zip(emotions, per_class_recall(cm))},
        "precision": {e: _f(p) for e, p in zip(emotions, per_class_precision(cm))},
        "emotions": emotions,
        "confusion": cm.tolist(),
        "macro_f1": f1_scores(cm)[1],
        "weighted_f1": f1_scores(cm)[2],
        "absent_classes": absent_classes(cm, emotions),
        "speakers": sorted(set(read_table(ref_dir / "utt2spk").values())),
        "not_scored": len(errors),
        "not_scored_utts": errors,
    }
    unclassed = sorted(u for u in ref_all if u not in ref and u not in errors)
    if unclassed:
        result["unclassed"] = len(unclassed)
    text_hyp, text_ref = decode_dir / expdir.TEXT_HYP, ref_dir / f"text_{token_type}"
    if text_hyp.is_file() and text_ref.is_file():
        hyp_t = read_table(text_hyp, allow_empty_value=True)
        ref_t = read_table(text_ref, allow_empty_value=True)
        errs = toks = 0
        for u in utts:
            r = ref_t.get(u, "").split()
            if not r:
                continue  # no phones (non-verbal only): nothing to recognise
            errs += edit_distance(r, hyp_t.get(u, "").split())
            toks += len(r)
        result["ctc_ter"] = errs / toks if toks else None
        result["ctc_ref_tokens"] = toks
        result["token_type"] = token_type
    lines = [
        f"decode dir: {decode_dir}",
        f"references: {ref_dir} ({len(utts)} utterances, speakers {' '.join(result['speakers'])})",
        f"WA {result['wa']:.4f}  UA {result['ua']:.4f}"
        + (f"  CTC TER {result['ctc_ter']:.4f} ({token_type})" if result.get("ctc_ter") is not None else ""),
        f"macro-F1 {result['macro_f1']:.4f}  weighted F1 {result['weighted_f1']:.4f}",
        *not_scored.header_line({u: e for u, e in errors.items() if u in ref}, len(ref)),
    ]
    if unclassed:
        lines.append(f"{len(unclassed)} more with no class ('{NO_CLASS}'): in the attribute figures only")
    if result["absent_classes"]:
        lines.append(f"UA over {len(emotions) - len(result['absent_classes'])} of {len(emotions)} classes: "
                     f"{' '.join(result['absent_classes'])} absent from this fold's references (no recall)")
    w = max(8, *map(len, emotions))  # labels of any length keep the columns aligned
    lines += ["", f"{'class':{w}s}  recall  precision  n"]
    for i, e in enumerate(emotions):
        lines.append(f"{e:{w}s}  {_fmt(result['recall'][e])}   {_fmt(result['precision'][e])}    {int(cm[i].sum())}"
                     + ("   absent from the references" if e in result["absent_classes"] else ""))
    lines += ["", "confusion (rows = reference, columns = hypothesis):", *confusion_lines(cm, emotions)]
    attr_result = score_attributes(decode_dir, ref_dir, sorted(utts + unclassed))
    if attr_result is not None:
        result["attributes"] = attr_result
        lines += attr_result_lines(attr_result)
    lines += not_scored.listing(errors)
    atomic_write_text(decode_dir / expdir.RESULT_TXT, "\n".join(lines) + "\n")
    atomic_write_text(decode_dir / expdir.RESULT_JSON, json.dumps(result, indent=1, allow_nan=False) + "\n")
    logger.info("%s: WA %.4f UA %.4f (%d utterances)", decode_dir, result["wa"], result["ua"], len(utts))
    if errors:
        logger.warning("%s: %d of %d test utterances were not scored (the decode could not decode them): %s",
                       decode_dir, len(errors), len(ref),
                       " ".join(sorted(errors)[:10]) + (" ..." if len(errors) > 10 else ""))
    return result


def score_attributes_only(decode_dir: Path, ref_dir: Path) -> dict:
    """A model with no classes (a dimensional-only corpus): CCC, Pearson r and MAE per attribute, no WA/UA."""
    from mtlser.data.attributes import UTT2ATTR

    ref = read_table(ref_dir / "utt2spk")
    hyp_path = decode_dir / expdir.UTT2ATTR_HYP
    if not hyp_path.is_file():
        raise MtlserError(f"{hyp_path}: missing; the model has no classes, so its decode writes attribute values "
                          "there: decode again")
    errors = not_scored.read_utt2error(decode_dir, read_table(hyp_path))
    check_hypotheses(ref, {**read_table(hyp_path), **errors}, ref_dir / UTT2ATTR, hyp_path)
    utts = sorted(u for u in ref if u not in errors)
    if not utts:
        raise MtlserError(f"{decode_dir}: none of the {len(ref)} test utterances could be decoded (see "
                          f"{decode_dir / not_scored.UTT2ERROR}); nothing to score")
    result = {"n": len(utts), "emotions": [], "speakers": sorted(set(ref.values())), "not_scored": len(errors),
              "not_scored_utts": errors, "attributes": score_attributes(decode_dir, ref_dir, utts)}
    lines = [f"decode dir: {decode_dir}",
             f"references: {ref_dir} ({len(utts)} utterances, speakers {' '.join(result['speakers'])}); "
             "attributes only (the model has no classes)",
             *not_scored.header_line(errors, len(ref)), *attr_result_lines(result["attributes"]),
             *not_scored.listing(errors)]
    atomic_write_text(decode_dir / expdir.RESULT_TXT, "\n".join(lines) + "\n")
    atomic_write_text(decode_dir / expdir.RESULT_JSON, json.dumps(result, indent=1, allow_nan=False) + "\n")
    logger.info("%s: mean CCC %.4f (%d utterances)", decode_dir, result["attributes"]["mean_ccc"], len(utts))
    return result


def confusion_lines(cm, emotions: list[str]) -> list[str]:
    """The confusion matrix as text, its columns as wide as the longest label or count (at least 5)."""
    row = max(5, *map(len, emotions))
    col = max(5, *map(len, emotions), *(len(str(int(c))) for c in np.asarray(cm).ravel()))
    return [" " * row + " " + " ".join(f"{e:>{col}s}" for e in emotions),
            *(f"{e:{row}s} " + " ".join(f"{int(c):{col}d}" for c in cm[i]) for i, e in enumerate(emotions))]


def _f(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _fmt(x: float | None) -> str:
    return "  n/a " if x is None else f"{x:.4f}"
