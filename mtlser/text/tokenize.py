"""Stage 1: transcripts -> CTC targets of one token type, emotion-tagged or not, and its token list.

Token types (``--token-type``):
  phncls  the paper's phoneme classes S F N L V Vs (conf/phone_classes.yaml), from G2P phones
  phn     the G2P phones themselves, ARPAbet with stress digits (69 symbols): phncls refined
  char    the corpus's own letters (any script), apostrophe, and ``|`` between words
  bpe     SentencePiece pieces, trained per fold on that fold's training text only, so that
          no test speaker's text shapes the units (:mod:`mtlser.text.bpe`, run after stage 2)

Emotion tagging (``--emo-tag``, the paper's idea, on by default) appends the
utterance's emotion index to every token: the position of its label in the data
dir's emotion inventory (``DATA/emotions``, mtlser.data.emotions), the same index
the emotion head is trained on. With IEMOCAP's ``ang hap sad neu``, ``Vs1`` is a
stressed vowel in a happy utterance; K emotions give K copies of every unit.
phncls keeps the paper's spelling (``Vs1``); the other types separate the tag with
``_`` (``AH0_1``, ``a_1``, ``▁the_1``), so a tag never reads as a stress digit. A
tagged token list has the inventory it was tagged with beside it
(``TOKEN_LIST_DIR/S/emotions``), which training compares with the data's.

Languages. G2P (phn, phncls) is English only: stage 1 refuses transcripts that do
not look English (:func:`mtlser.text.g2p.check_english`). char and bpe work on any
script: char's units are a-z and ``'`` (always listed, so English token lists do
not depend on the data) plus every other letter found in ``DATA/text``, in code
point order; text is NFC-normalised and lower-cased, accents and marks kept.

File names. A token set is named after its type in its natural form: ``phncls`` is the
paper's *tagged* classes (``text_phncls``), while ``phn`` is the plain G2P output
(``text_phn``), and ``char``/``bpe<N>`` plain characters/pieces. A departure from the
natural form is a suffix: ``phncls_notag`` (classes without the tag), ``phn_emo``,
``char_emo``, ``bpe<N>_emo`` (tagged; N = --nbpe). For a set S, stage 1 writes

    DATA/text_S                   utt  targets (empty for an utterance with no words)
    TOKEN_LIST_DIR/S/tokens.txt   <blank> first (the CTC blank, index 0), then one token per line

and the trainer reads ``text_<data.token_type>`` with data.token_type = S. Besides,
G2P-based types keep the G2P output as ``DATA/text_phn`` (the plain phn set, kept for
inspection), and char/bpe write the normalised transcript ``DATA/text_norm``
(lower case, non-verbal tags and punctuation removed) that they are built from.
bpe writes no targets here: its units depend on the fold (see mtlser.text.bpe).

An utterance whose transcript is empty after cleaning (only ``[LAUGHTER]`` and the
like) gets an empty target line: it keeps its emotion label and trains without
the CTC term. So does one whose words give no tokens (another script under G2P, digits only under
char) and, when tagging, one without an emotion class; stage 1 counts them per reason
(:data:`NO_TOKEN_REASONS`) and names the first few of each. Each file is written atomically.

Usage:
    python -m mtlser.text.tokenize --data-dir data/all --token-list-dir data/token_list \\
        [--token-type phncls] [--emo-tag true] [--nbpe 100] [--phone-classes conf/phone_classes.yaml]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import unicodedata
from pathlib import Path

from tqdm import tqdm

from mtlser.data.datadir import DataDir, read_table, write_table
from mtlser.data.emotions import NO_CLASS, read_inventory, write_inventory
from mtlser.text.g2p import G2P, TAG, check_english, clean_transcript
from mtlser.text.phone_classes import ARPABET, ARPABET_VOWELS, BLANK, PhoneClassMap, emotion_tagged
from mtlser.utils import MtlserError, run_main, setup_logging
from mtlser.utils.fileio import atomic_write_text

logger = logging.getLogger(__name__)

TOKEN_TYPES = ("phncls", "phn", "char", "bpe")
#: The token list's file name inside ``<token list dir>/<token set>/``.
TOKEN_LIST_FILE = "tokens.txt"
#: The token-list dir of a fold (bpe: the pieces are trained per fold, in the fold dir).
FOLD_TOKEN_LIST_DIR = "token_list"
NOTAG = "_notag"  # phncls without the emotion tag
EMO = "_emo"  # another type with the emotion tag
#: The char units always listed (English), and the word boundary (wav2vec2's ``|``); other letters of a
#: corpus are added after CHARS (:func:`char_units`).
CHARS = tuple("abcdefghijklmnopqrstuvwxyz'")
WORD_BOUNDARY = "|"


def token_list_path(token_list_dir: str | Path, token_set: str) -> Path:
    """Where the token list of ``token_set`` lives under a token-list dir (stage 1's, or a fold's for bpe)."""
    return Path(token_list_dir) / token_set / TOKEN_LIST_FILE


def token_set_name(token_type: str, emo_tag: bool = True, nbpe: int = 100) -> str:
    """The text_<name> suffix: ``('phncls', True) -> 'phncls'``, ``('phncls', False) -> 'phncls_notag'``,
    ``('phn', True) -> 'phn_emo'``, ``('bpe', False, 100) -> 'bpe100'``."""
    if token_type not in TOKEN_TYPES:
        raise MtlserError(f"unknown token type '{token_type}'; expected one of {', '.join(TOKEN_TYPES)}")
    name = f"bpe{nbpe}" if token_type == "bpe" else token_type
    if token_type == "phncls":
        return name if emo_tag else name + NOTAG
    return name + EMO if emo_tag else name


def tag_separator(token_type: str) -> str:
    """phncls: the paper's ``Vs1``; others ``AH0_1`` so that a tag is never read as a stress digit."""
    return "" if token_type == "phncls" else "_"


def tagged_token_list(units: list[str], emo_tag: bool, sep: str, num_emotions: int) -> list[str]:
    """``<blank>`` first (CTC blank = index 0), then the units, once per emotion index when tagged."""
    if not emo_tag:
        return [BLANK] + list(units)
    return [BLANK] + [f"{u}{sep}{i}" for i in range(num_emotions) for u in units]


def tag(tokens: list[str], emotion_index: int | None, emo_tag: bool, sep: str) -> str:
    return " ".join(emotion_tagged(tokens, emotion_index, sep) if emo_tag else tokens)


def emotion_indices(data_dir: Path, utt2emo: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """The data dir's inventory and each utterance's index in it (the tag); an unknown label names file and line.

    An utterance with no class (NO_CLASS: kept for its attributes) has no index, hence no tagged targets.
    """
    emotions = read_inventory(data_dir)
    index = {e: i for i, e in enumerate(emotions)}
    for lineno, (utt, emo) in enumerate(utt2emo.items(), 1):
        if emo not in index and emo != NO_CLASS:
            raise MtlserError(f"{data_dir / 'utt2emo'}:{lineno}: '{utt}' has label '{emo}', which is not in "
                              f"{data_dir / 'emotions'} ({' '.join(emotions)}); "
                              "rerun the data preparation (it validates)")
    return emotions, {u: index[e] for u, e in utt2emo.items() if e != NO_CLASS}


def read_token_list(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise MtlserError(f"{path}: token list not found; run the tokens step, and for bpe the folds step, with the "
                          "same --token-type / --emo-tag / --nbpe")
    return parse_token_list(path.read_text(encoding="utf-8"), str(path))


def parse_token_list(text: str, where: str) -> list[str]:
    """A token list's text (one token a line, <blank> first); ``where`` names it in errors (a file, a pack member)."""
    tokens = [line.strip() for line in text.splitlines()]
    if not tokens or tokens[0] != BLANK:
        raise MtlserError(f"{where}:1: the first token must be {BLANK} (the CTC blank, index 0)")
    for i, t in enumerate(tokens, 1):
        if not t or " " in t:
            raise MtlserError(f"{where}:{i}: empty or multi-word token '{t}'")
    if len(set(tokens)) != len(tokens):
        raise MtlserError(f"{where}: duplicate tokens")
    return tokens


def write_token_list(path: str | Path, tokens: list[str]) -> None:
    path = Path(path)
    for parent in (path.parent, *path.parent.parents):
        if parent.is_file():
            raise MtlserError(f"{parent}: is a file (the token list of an older layout); remove it and rerun "
                              "the tokens step: token lists are now TOKEN_LIST_DIR/<token set>/tokens.txt")
    atomic_write_text(path, "".join(t + "\n" for t in tokens))


def normalize_text(text: str) -> str:
    """The transcript as char and bpe see it: no tags or punctuation, lower case, NFC (accents and marks kept)."""
    text = unicodedata.normalize("NFC", clean_transcript(text))
    return " ".join(text.lower().split())


def is_char_unit(c: str) -> bool:
    """Letters and combining marks of any script (a Devanagari vowel sign is a unit), and the apostrophe."""
    return c == "'" or unicodedata.category(c)[0] in ("L", "M")


def char_units(norms: list[str]) -> list[str]:
    """CHARS, then the other letters these normalised transcripts hold (code point order), then ``|``."""
    extra = sorted({c for t in norms for c in t if is_char_unit(c) and c not in CHARS})
    return list(CHARS) + extra + [WORD_BOUNDARY]


def chars_of(norm: str) -> tuple[list[str], int]:
    """Characters of a normalised transcript with ``|`` between words; and how many were left out (digits)."""
    words = [[c for c in word if is_char_unit(c)] for word in norm.split()]
    # Digits: a spoken number is words, which the transcript does not give. A word of digits only goes.
    dropped = sum(len(word) for word in norm.split()) - sum(map(len, words))
    out: list[str] = []
    for word in (w for w in words if w):
        out += ([WORD_BOUNDARY] if out else []) + word
    return out, dropped


def phn_units() -> list[str]:
    """ARPAbet as G2P writes it: consonants bare, vowels with stress 0, 1 or 2 (69 symbols)."""
    return [f"{p}{s}" for p in ARPABET for s in ((0, 1, 2) if p in ARPABET_VOWELS else ("",))]


def phonemize(texts: dict[str, str], g2p: G2P | None = None, progress: bool = True) -> dict[str, list[str]]:
    g2p = g2p or G2P()
    out = {}
    for utt, text in tqdm(texts.items(), desc="g2p", disable=not progress, unit="utt", mininterval=2):
        out[utt] = g2p(text)
    return out


_PHONE = re.compile(r"^[A-Z]+[012]?$")


def tokenize_data_dir(data_dir: str | Path, token_list_dir: str | Path, token_type: str = "phncls",
                      emo_tag: bool = True, phone_classes: str | Path | None = None, nbpe: int = 100,
                      g2p: G2P | None = None) -> dict:
    """Write DATA/text_<set> and TOKEN_LIST_DIR/<set>/tokens.txt (see the module doc); return statistics."""
    data_dir = Path(data_dir)
    name = token_set_name(token_type, emo_tag, nbpe)
    texts = read_table(data_dir / "text", allow_empty_value=True)
    utt2emo = read_table(data_dir / "utt2emo")
    if set(texts) != set(utt2emo):
        raise MtlserError(f"{data_dir}: text and utt2emo have different utterances; "
                          f"run: python -m mtlser.data.datadir fix {data_dir}")
    sep = tag_separator(token_type)
    emotions, emo_index = emotion_indices(data_dir, utt2emo) if emo_tag else (None, {})
    units: list[str] | None = None
    seqs: dict[str, list[str]] = {}
    if token_type in ("phncls", "phn"):
        g2p = g2p or G2P()
        check_english(texts, getattr(g2p, "lexicon", None), data_dir / "text")
        phones = phonemize(texts, g2p)
        write_table(data_dir / "text_phn", {u: " ".join(p) for u, p in phones.items()})
        if token_type == "phncls":
            cmap = PhoneClassMap.load(phone_classes)
            units = list(cmap.classes)
            seqs = {u: cmap.classes_of(p) for u, p in phones.items()}
        else:
            units = phn_units()
            known = set(units)
            for u, p in phones.items():
                bad = [x for x in p if x not in known]
                if bad:
                    raise MtlserError(f"{data_dir / 'text_phn'}: '{u}' has phone(s) {bad} outside ARPAbet "
                                      "with stress digits; check the G2P output")
            seqs = phones
    else:
        norm = {u: normalize_text(t) for u, t in texts.items()}
        write_table(data_dir / "text_norm", norm)
        if token_type == "char":
            units = char_units(list(norm.values()))
            n_dropped = 0
            for u, t in norm.items():
                seqs[u], d = chars_of(t)
                n_dropped += d
            if len(units) > len(CHARS) + 1:
                logger.info("char units: a-z ' and %d other letters of the corpus: %s", len(units) - len(CHARS) - 1,
                            "".join(units[len(CHARS):-1]))
            if n_dropped:
                logger.warning("%d characters that are not letters (digits) were left out of text_%s", n_dropped, name)

    stats = {"token_set": name, "utterances": len(texts),
             "nonverbal_only": sum(1 for t in texts.values() if t.strip() and not clean_transcript(t))}
    if units is None:  # bpe: per fold, after stage 2
        logger.info("%s: wrote text_norm for %d utterances; bpe units are trained per fold on the training "
                    "split after stage 2 (python -m mtlser.text.bpe)", data_dir, len(texts))
        return stats
    # Tagged targets need the class: an utterance without one (NO_CLASS) trains without the CTC term.
    unclassed = {u for u in texts if emo_tag and u not in emo_index}
    text_out = {u: "" if u in unclassed else tag(seqs[u], emo_index.get(u), emo_tag, sep) for u in texts}
    write_table(data_dir / f"text_{name}", text_out)
    token_list = token_list_path(token_list_dir, name)
    tokens = tagged_token_list(units, emo_tag, sep, len(emotions or []))
    write_token_list(token_list, tokens)
    if emotions is not None:
        write_inventory(token_list.parent, emotions)  # what the tags are positions in
    reasons = no_token_reasons(texts, {u for u, v in text_out.items() if not v}, unclassed, token_type)
    by_reason: dict[str, list[str]] = {}
    for utt, reason in reasons.items():
        by_reason.setdefault(reason, []).append(utt)
    stats.update({"empty_targets": len(reasons), "no_tokens": {r: len(us) for r, us in by_reason.items()},
                  "tokens": sum(len(v.split()) for v in text_out.values()), "token_list": str(token_list)})
    logger.info("%s: text_%s for %d utterances, %d tokens (list: %s, %d entries); %d with no tokens keep their "
                "emotion label and train without the CTC term%s", data_dir, name, stats["utterances"],
                stats["tokens"], token_list, len(tokens), len(reasons), ", by reason:" if reasons else "")
    for reason in NO_TOKEN_REASONS:  # a fixed order, so that logs of two runs compare line by line
        utts = sorted(by_reason.get(reason, []))
        if utts:
            logger.info("  %d %s: %s%s", len(utts), reason, " ".join(utts[:NAMED]),
                        f" ... ({len(utts) - NAMED} more in text_{name}, empty lines)" if len(utts) > NAMED else "")
    return stats


#: Why an utterance has no CTC tokens, in the order stage 1 reports them (:func:`no_token_reasons`).
NO_CLASS_REASON = f"without an emotion class (utt2emo {NO_CLASS}: no tag to give its tokens)"
NO_TOKEN_REASONS = (
    "with an empty transcript",
    "with only non-verbal tags ([LAUGHTER] ...)",
    "with only punctuation",
    "with no letters a-z for G2P (another script? --token-type char or bpe reads any)",
    "with no letters (digits only: char units are letters)",
    NO_CLASS_REASON,
)
#: How many utterances of each reason stage 1 names.
NAMED = 5


def no_token_reasons(texts: dict[str, str], empty: set[str], unclassed: set[str], token_type: str) -> dict[str, str]:
    """utt -> why its target line is empty (one of NO_TOKEN_REASONS), for the utterances in ``empty``."""
    out = {}
    for utt in empty:
        text = texts[utt]
        cleaned = clean_transcript(text)
        if utt in unclassed and cleaned:
            reason = NO_CLASS_REASON
        elif not text.strip():
            reason = NO_TOKEN_REASONS[0]
        elif not cleaned:
            reason = NO_TOKEN_REASONS[1] if TAG.search(text) else NO_TOKEN_REASONS[2]
        elif token_type in ("phncls", "phn"):
            reason = NO_TOKEN_REASONS[3]
        else:
            reason = NO_TOKEN_REASONS[4]
        out[utt] = reason
    return out


def str2bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stage 1: CTC targets of one token type and their token list.")
    parser.add_argument("--data-dir", required=True, help="data dir with text and utt2emo (e.g. data/all)")
    parser.add_argument("--token-list-dir", required=True,
                        help="token lists go to TOKEN_LIST_DIR/<token set>/tokens.txt (e.g. data/token_list)")
    parser.add_argument("--token-type", default="phncls", choices=TOKEN_TYPES)
    parser.add_argument("--emo-tag", type=str2bool, default=True,
                        help="append the emotion index to every token (the paper; default true)")
    parser.add_argument("--nbpe", type=int, default=100, help="bpe: pieces per fold (names the set bpe<N>)")
    parser.add_argument("--phone-classes", default=None, help="phone -> class map (default conf/phone_classes.yaml)")
    args = parser.parse_args(argv)
    setup_logging()
    DataDir.load(args.data_dir, ["utt2spk"])  # fails early with a clear message if the dir is missing
    tokenize_data_dir(args.data_dir, args.token_list_dir, args.token_type, args.emo_tag, args.phone_classes,
                      args.nbpe)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
