"""Attributes as data (issue 21.1): utt2attr + its declaration, validated with file:line errors."""

from __future__ import annotations

import pytest

from mtlser.data.attributes import (ATTRIBUTES, UTT2ATTR, Attribute, AttributesError, declaration_from_yaml,
                                    declaration_to_yaml, read_declaration, read_values, write_declaration,
                                    write_values)
from mtlser.data.datadir import DataDir, read_table, validate_data_dir
from mtlser.data.split import split
from mtlser.utils import MtlserError

AVD = [Attribute("arousal", 1, 7), Attribute("valence", 1, 7), Attribute("dominance", 1, 7)]


def add_attributes(path, attrs=AVD):
    utts = sorted(read_table(path / "utt2spk"))
    write_declaration(path, attrs)
    write_values(path / UTT2ATTR, {u: [1 + (i % 7), 4.5, 7.0] for i, u in enumerate(utts)})
    return utts


def test_round_trip_and_fold_copies(make_data_dir, tmp_path):
    data = make_data_dir(n_spk=4, n_utt=6)
    utts = add_attributes(data)
    assert (data / ATTRIBUTES).read_text() == "arousal 1 7\nvalence 1 7\ndominance 1 7\n"
    dd = validate_data_dir(data)
    assert dd.attributes == AVD
    values = read_values(data)
    assert values[utts[1]] == [2.0, 4.5, 7.0]
    assert declaration_from_yaml(declaration_to_yaml(AVD), "model.yaml") == AVD
    # stage 2 carries both files into every fold, each a valid data dir
    split(data, tmp_path / "folds", "loso", "share", 0.2, seed=0)
    fold = tmp_path / "folds" / "fold01"
    for s in ("train", "valid", "test"):
        sub = validate_data_dir(fold / s)
        assert sub.attributes == AVD
        assert read_values(fold / s) == {u: values[u] for u in read_table(fold / s / "utt2spk")}
    assert read_declaration(tmp_path / "folds" / "final" / "train") == AVD


def test_a_dir_without_attributes_is_unchanged(make_data_dir):
    data = make_data_dir(n_spk=2, n_utt=2)
    assert validate_data_dir(data).attributes is None
    assert not (data / ATTRIBUTES).exists()


@pytest.mark.parametrize("line, message", [
    ("arousal 1", "has 2 fields"),
    ("arousal 7 1", "min 7 >= max 1"),
    ("arousal low 7", "min 'low' is not a number"),
    ("1st 1 7", "is not one word"),
])
def test_bad_declaration_names_file_and_line(make_data_dir, line, message):
    data = make_data_dir(n_spk=2, n_utt=2)
    add_attributes(data)
    (data / ATTRIBUTES).write_text(f"valence 1 7\n{line}\n")
    with pytest.raises(MtlserError, match=rf"{data / ATTRIBUTES}:2: .*{message}"):
        validate_data_dir(data)


def test_declared_twice(tmp_path):
    (tmp_path / ATTRIBUTES).write_text("valence 1 7\nvalence 1 5\n")
    with pytest.raises(AttributesError, match=rf"{tmp_path / ATTRIBUTES}:2: attribute 'valence' is declared twice"):
        read_declaration(tmp_path)


def rewrite_line(path, lineno, new):
    lines = path.read_text().splitlines()
    key = lines[lineno - 1].split()[0]
    lines[lineno - 1] = f"{key} {new}"
    path.write_text("".join(l + "\n" for l in lines))
    return key


@pytest.mark.parametrize("values, message", [
    ("7.5 4 4", r"has arousal 7.5, outside its scale \[1, 7\]"),
    ("0.99 4 4", r"has arousal 0.99, outside its scale"),
    ("4 4", r"has 2 value\(s\); the declaration has 3 \(arousal valence dominance\)"),
    ("4 4 4 4", r"has 4 value\(s\)"),
    ("4 x 4", r"valence 'x' is not a number"),
    ("4 nan 4", r"valence 'nan' is not a finite number"),
])
def test_bad_values_name_file_and_line(make_data_dir, values, message):
    data = make_data_dir(n_spk=2, n_utt=3)
    add_attributes(data)
    key = rewrite_line(data / UTT2ATTR, 4, values)
    with pytest.raises(MtlserError, match=rf"{data / UTT2ATTR}:4: utterance '{key}'.*{message}"):
        validate_data_dir(data)


def test_missing_values_and_missing_files(make_data_dir):
    data = make_data_dir(n_spk=2, n_utt=3)
    add_attributes(data)
    lines = (data / UTT2ATTR).read_text().splitlines()
    (data / UTT2ATTR).write_text("".join(l + "\n" for l in lines[1:]))
    with pytest.raises(MtlserError, match=rf"{data / UTT2ATTR}: key set differs from utt2spk \(0 extra.*1 missing"):
        validate_data_dir(data)
    (data / UTT2ATTR).unlink()
    with pytest.raises(MtlserError, match=rf"{data / UTT2ATTR}: no such file, but .*{ATTRIBUTES} declares"):
        validate_data_dir(data)
    add_attributes(data)
    (data / ATTRIBUTES).unlink()
    with pytest.raises(MtlserError, match=rf"{data / ATTRIBUTES}: no such file; a data dir with {UTT2ATTR}"):
        validate_data_dir(data)


def test_values_must_cover_every_utterance_the_task_needs(tmp_path):
    from mtlser.data.attributes import check_table
    with pytest.raises(AttributesError, match=r"1 utterance\(s\) have no attribute values, e.g. \['b'\]"):
        check_table(tmp_path / UTT2ATTR, {"a": "1 2 3"}, AVD, ["a", "b"])


def test_yaml_declaration_is_checked():
    with pytest.raises(AttributesError, match=r"model.yaml: attribute 1 must be \{name, min, max\}"):
        declaration_from_yaml([{"name": "arousal"}], "model.yaml")
    with pytest.raises(AttributesError, match=r"model.yaml:1: attribute 'arousal' has min 7"):
        declaration_from_yaml([{"name": "arousal", "min": 7, "max": 1}], "model.yaml")
