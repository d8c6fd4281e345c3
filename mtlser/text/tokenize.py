"""Stage 1: transcripts -> phones -> emotion-tagged phoneme-class tokens.

Reads ``DATA/text`` and ``DATA/utt2emo``; writes

    DATA/text_phn      utt  HH AH0 L OW1 ...     (g2p output, kept for inspection)
    DATA/text_phncls   utt  F1 V1 L1 Vs1 ...     (CTC targets of the paper)
    TOKEN_LIST         <blank> then S0 F0 ... Vs3, one per line (index = line number - 1)

An utterance whose transcript is empty after cleaning (only ``[LAUGHTER]``
and the like) gets empty lines in both files: it keeps its emotion label and
trains without the CTC term. Each file is written atomically.

Usage:
    python -m mtlser.text.tokenize --data-dir data/all --token-list data/token_list \\
        [--phone-classes conf/phone_classes.yaml]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from mtlser.data.datadir import DataDir, read_table, write_table
from mtlser.text.g2p import G2P, clean_transcript
from mtlser.text.phone_classes import PhoneClassMap, emotion_tagged, phncls_token_list
from mtlser.utils import MtlserError, run_main, setup_logging
from mtlser.utils.fileio import atomic_write_text

logger = logging.getLogger(__name__)


def read_token_list(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise MtlserError(f"{path}: token list not found; run stage 1 (tokenization) first")
    tokens = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    if not tokens or tokens[0] != "<blank>":
        raise MtlserError(f"{path}:1: the first token must be <blank> (the CTC blank, index 0)")
    for i, t in enumerate(tokens, 1):
        if not t or " " in t:
            raise MtlserError(f"{path}:{i}: empty or multi-word token '{t}'")
    if len(set(tokens)) != len(tokens):
        raise MtlserError(f"{path}: duplicate tokens")
    return tokens


def write_token_list(path: str | Path, tokens: list[str]) -> None:
    atomic_write_text(path, "".join(t + "\n" for t in tokens))


def phonemize(texts: dict[str, str], g2p: G2P | None = None, progress: bool = True) -> dict[str, list[str]]:
    g2p = g2p or G2P()
    out = {}
    for utt, text in tqdm(texts.items(), desc="g2p", disable=not progress, unit="utt", mininterval=2):
        out[utt] = g2p(text)
    return out


def tokenize_data_dir(data_dir: str | Path, token_list: str | Path, phone_classes: str | Path | None = None) -> dict:
    data_dir = Path(data_dir)
    texts = read_table(data_dir / "text", allow_empty_value=True)
    utt2emo = read_table(data_dir / "utt2emo")
    if set(texts) != set(utt2emo):
        raise MtlserError(f"{data_dir}: text and utt2emo have different utterances; run: python -m mtlser.data.datadir fix {data_dir}")
    cmap = PhoneClassMap.load(phone_classes)

    phones = phonemize(texts)
    text_phn = {u: " ".join(p) for u, p in phones.items()}
    text_phncls = {}
    for utt, ph in phones.items():
        classes = cmap.classes_of(ph)
        text_phncls[utt] = " ".join(emotion_tagged(classes, utt2emo[utt]))

    write_table(data_dir / "text_phn", text_phn)
    write_table(data_dir / "text_phncls", text_phncls)
    write_token_list(token_list, phncls_token_list(cmap.classes))

    n_empty = sum(1 for v in text_phncls.values() if not v)
    n_nonverbal = sum(1 for u, t in texts.items() if t.strip() and not clean_transcript(t))
    stats = {
        "utterances": len(texts),
        "empty_targets": n_empty,
        "nonverbal_only": n_nonverbal,
        "tokens": sum(len(v.split()) for v in text_phncls.values()),
    }
    logger.info(
        "%s: %d utterances, %d tokens; %d with no phones (%d of them only non-verbal tags) "
        "keep their emotion label and train without the CTC term",
        data_dir, stats["utterances"], stats["tokens"], n_empty, n_nonverbal,
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stage 1: G2P and phoneme-class tokenization.")
    parser.add_argument("--data-dir", required=True, help="data dir with text and utt2emo (e.g. data/all)")
    parser.add_argument("--token-list", required=True, help="where to write the token list (e.g. data/token_list)")
    parser.add_argument("--phone-classes", default=None, help="phone -> class map (default conf/phone_classes.yaml)")
    args = parser.parse_args(argv)
    setup_logging()
    DataDir.load(args.data_dir, ["utt2spk"])  # fails early with a clear message if the dir is missing
    tokenize_data_dir(args.data_dir, args.token_list, args.phone_classes)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
