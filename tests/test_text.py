"""Stage 1: transcript cleaning, offline G2P, phone -> class mapping, emotion tags, token list."""

from __future__ import annotations

import pytest
import yaml

from mtlser.data.datadir import read_table
from mtlser.text.g2p import clean_transcript, split_stress
from mtlser.text.phone_classes import ARPABET, PhoneClassMap, emotion_tagged, phncls_token_list
from mtlser.text.tokenize import read_token_list, tokenize_data_dir
from mtlser.utils import MtlserError


@pytest.mark.parametrize("raw, clean", [
    ("Excuse me.", "Excuse me"),
    ("[LAUGHTER] Oh, really? [BREATHING]", "Oh really"),
    ("[LAUGHTER]", ""),
    ("[GARBAGE] [BREATHING]", ""),
    ("Don't -- you <noise> dare!", "Don't you dare"),
    ("well-known 'quote'", "well known quote"),
])
def test_clean_transcript(raw, clean):
    assert clean_transcript(raw) == clean


def test_split_stress():
    assert split_stress("AH0") == ("AH", 0)
    assert split_stress("EY1") == ("EY", 1)
    assert split_stress("K") == ("K", None)
    with pytest.raises(ValueError):
        split_stress("ah0")


def test_default_map_classes_every_phone_and_stress():
    cmap = PhoneClassMap.load()
    # Consonant classes as the paper lists them.
    for p in "P B T D K G CH JH".split():
        assert cmap.phone_class(p) == "S"
    for p in "F V TH DH S Z SH ZH".split():
        assert cmap.phone_class(p) == "F"
    for p in "M N NG".split():
        assert cmap.phone_class(p) == "N"
    for p in "L R Y W".split():
        assert cmap.phone_class(p) == "L"
    # Vowels by stress digit: 0 -> V, 1 and 2 -> Vs.
    assert cmap.phone_class("AH0") == "V"
    assert cmap.phone_class("AH1") == "Vs"
    assert cmap.phone_class("ER2") == "Vs"
    # HH is not in the paper; the shipped map puts it with the fricatives.
    assert cmap.phone_class("HH") == "F"
    with pytest.raises(ValueError, match="no stress digit"):
        cmap.phone_class("AA")
    assert {cmap.phone_class(p + "1" if p in cmap.vowels else p) for p in ARPABET} == {"S", "F", "N", "L", "Vs"}


def test_hh_is_configurable(tmp_path):
    raw = yaml.safe_load(open(PhoneClassMap.load().source))
    raw["consonants"]["F"].remove("HH")
    raw["drop"] = ["HH"]
    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump(raw))
    cmap = PhoneClassMap.load(path)
    assert cmap.phone_class("HH") is None
    assert cmap.classes_of(["HH", "AH0", "L", "OW1"]) == ["V", "L", "Vs"]

    raw["drop"] = []
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(MtlserError, match=r"\['HH'\] have no class"):
        PhoneClassMap.load(path)


def test_emotion_tags_and_token_list():
    assert emotion_tagged(["Vs", "S"], 1) == ["Vs1", "S1"]
    assert emotion_tagged(["S"], 0) == ["S0"]
    assert emotion_tagged(["V"], 3, "_") == ["V_3"]
    tokens = phncls_token_list(PhoneClassMap.load().classes, 4)
    assert len(tokens) == 25 and tokens[0] == "<blank>"
    assert tokens[1:7] == ["S0", "F0", "N0", "L0", "V0", "Vs0"]
    assert tokens[-1] == "Vs3" and len(set(tokens)) == 25
    # K emotions: 6 K class tokens after the blank.
    assert len(phncls_token_list(PhoneClassMap.load().classes, 8)) == 1 + 6 * 8


def test_g2p_offline(g2p):
    assert g2p("Hello world") == ["HH", "AH0", "L", "OW1", "W", "ER1", "L", "D"]
    assert g2p("[LAUGHTER]") == []
    # Numbers are expanded, out-of-vocabulary words go through the neural predictor.
    assert g2p("2") == ["T", "UW1"]
    oov = g2p("blorptastic")
    assert oov and all(split_stress(p) for p in oov)
    # Homographs take the reading of their part of speech (textblob tags, see mtlser.text.g2p).
    assert g2p("I will record it")[4:9] == ["R", "IH0", "K", "AO1", "R"]
    assert g2p("the record")[2:7] == ["R", "EH1", "K", "ER0", "D"]


def test_tokenize_data_dir(make_data_dir, tmp_path):
    path = make_data_dir(n_spk=1, n_utt=4, text="Hello world")
    text = read_table(path / "text")
    utts = sorted(text)
    text[utts[0]] = "[LAUGHTER]"  # only non-verbal: keeps its label, no phones
    (path / "text").write_text("".join(f"{u} {t}\n" for u, t in sorted(text.items())))
    stats = tokenize_data_dir(path, tmp_path / "token_list")
    phncls = read_table(path / "text_phncls", allow_empty_value=True)
    phn = read_table(path / "text_phn", allow_empty_value=True)
    emo = read_table(path / "utt2emo")
    assert phncls[utts[0]] == "" and phn[utts[0]] == ""
    idx = ["ang", "hap", "sad", "neu"].index(emo[utts[1]])
    assert phn[utts[1]] == "HH AH0 L OW1 W ER1 L D"
    assert phncls[utts[1]].split() == [f"{c}{idx}" for c in ["F", "V", "L", "Vs", "L", "Vs", "L", "S"]]
    assert stats["empty_targets"] == 1 and stats["nonverbal_only"] == 1
    assert read_token_list(tmp_path / "token_list" / "phncls" / "tokens.txt")[0] == "<blank>"


def test_token_list_errors(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("S0\n<blank>\n")
    with pytest.raises(MtlserError, match="first token must be <blank>"):
        read_token_list(path)
    with pytest.raises(MtlserError, match="run the tokens step"):
        read_token_list(tmp_path / "missing")
