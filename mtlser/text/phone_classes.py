"""Phones to the paper's emotion-tagged phoneme classes, and token lists.

Classes (paper): S stops and affricates, F fricatives, N nasals (M N NG),
L liquids and glides (L R Y W), V unstressed vowels (stress 0), Vs stressed
vowels (stress 1 or 2). The mapping lives in ``conf/phone_classes.yaml`` so
that the choice for HH (not listed in the paper; F by default) is visible and
can be changed. Each class token carries the utterance's emotion index, the
position of its label in the data's emotion inventory (mtlser.data.emotions):
with IEMOCAP's ``ang hap sad neu``, ``Vs1`` is a stressed vowel in a happy utterance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mtlser.text.g2p import split_stress
from mtlser.utils import MtlserError

BLANK = "<blank>"

#: ARPAbet's 39 phones (CMU dictionary set), without stress digits.
ARPABET = (
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH".split()
)
ARPABET_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")

DEFAULT_MAP_FILE = Path(__file__).resolve().parents[2] / "conf" / "phone_classes.yaml"


@dataclass
class PhoneClassMap:
    classes: list[str]
    consonants: dict[str, list[str]]
    vowels: list[str]
    unstressed: str = "V"
    stressed: str = "Vs"
    drop: list[str] = field(default_factory=list)
    source: str = "<default>"

    def __post_init__(self) -> None:
        where = self.source
        seen: dict[str, str] = {}
        for cls, phones in self.consonants.items():
            if cls not in self.classes:
                raise MtlserError(f"{where}: consonant class '{cls}' is not in classes {self.classes}")
            for p in phones:
                if p in seen:
                    raise MtlserError(f"{where}: phone '{p}' is listed twice ({seen[p]} and {cls})")
                seen[p] = cls
        for p in self.vowels:
            if p in seen:
                raise MtlserError(f"{where}: phone '{p}' is both a consonant ({seen[p]}) and a vowel")
            seen[p] = "vowel"
        for p in self.drop:
            if p in seen:
                raise MtlserError(f"{where}: phone '{p}' is both in drop and in {seen[p]}")
            seen[p] = "drop"
        for cls in (self.unstressed, self.stressed):
            if cls not in self.classes:
                raise MtlserError(f"{where}: vowel class '{cls}' is not in classes {self.classes}")
        unknown = sorted(set(seen) - set(ARPABET))
        if unknown:
            raise MtlserError(f"{where}: {unknown} are not ARPAbet phones")
        missing = sorted(set(ARPABET) - set(seen))
        if missing:
            raise MtlserError(f"{where}: ARPAbet phones {missing} have no class; add them to a class or to drop")
        self._consonant = {p: c for c, ps in self.consonants.items() for p in ps}
        self._vowels = set(self.vowels)
        self._drop = set(self.drop)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "PhoneClassMap":
        path = Path(path) if path is not None else DEFAULT_MAP_FILE
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
        except FileNotFoundError:
            raise MtlserError(f"{path}: phone class map not found") from None
        except yaml.YAMLError as e:
            raise MtlserError(f"{path}: not valid YAML: {e}") from None
        allowed = {"classes", "consonants", "vowels", "unstressed", "stressed", "drop"}
        if not isinstance(raw, dict) or set(raw) - allowed or not {"classes", "consonants", "vowels"} <= set(raw):
            raise MtlserError(f"{path}: expected keys {sorted(allowed)} (classes, consonants, vowels required)")
        return cls(**raw, source=str(path))

    def phone_class(self, phone: str) -> str | None:
        """``'AH0' -> 'V'``, ``'EY1' -> 'Vs'``, ``'K' -> 'S'``; None for dropped phones."""
        base, stress = split_stress(phone)
        if base in self._drop:
            return None
        if base in self._vowels:
            if stress is None:
                raise ValueError(f"vowel '{phone}' has no stress digit (expected e.g. {base}0/{base}1/{base}2)")
            return self.unstressed if stress == 0 else self.stressed
        if base in self._consonant:
            return self._consonant[base]
        raise ValueError(f"'{phone}' has no phoneme class")

    def classes_of(self, phones: list[str]) -> list[str]:
        return [c for c in (self.phone_class(p) for p in phones) if c is not None]


def emotion_tagged(tokens: list[str], emotion_index: int, sep: str = "") -> list[str]:
    """Tag each token with the emotion's index in the inventory: ``(['S', 'Vs'], 1) -> ['S1', 'Vs1']``."""
    return [f"{t}{sep}{emotion_index}" for t in tokens]


def phncls_token_list(classes: list[str], num_emotions: int) -> list[str]:
    """``<blank>`` first (CTC blank = index 0), then every class for emotion 0, 1, ..., num_emotions - 1."""
    return [BLANK] + [f"{c}{i}" for i in range(num_emotions) for c in classes]
