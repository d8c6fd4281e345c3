"""The fixed-split protocol: the corpus's train/dev/test sets as one fold (valid = dev), each test set its own
data dir and decode dir; selection never sees a test set; bad utt2set lines stop with file:line."""

from __future__ import annotations

import pytest

from mtlser.data.datadir import read_table, validate_data_dir, write_table
from mtlser.data.fold_names import fold_dirs
from mtlser.data.split import split
from mtlser.recipe.names import fold_assignments, fold_numbers, fold_test_sets, run_names
from mtlser.utils import MtlserError


def with_sets(data, assign):
    """Write data/utt2set: utterance i (C order) gets assign(i)."""
    utts = sorted(read_table(data / "utt2spk"))
    write_table(data / "utt2set", {u: assign(i) for i, u in enumerate(utts)})
    return utts


SETS = ("train", "train", "dev", "test", "train", "test2", "train", "dev")


def test_fixed_writes_one_fold_with_dev_as_valid_and_each_test_set(make_data_dir, tmp_path):
    data = make_data_dir(n_spk=4, n_utt=4)
    utts = with_sets(data, lambda i: SETS[i % len(SETS)])
    want = {s: {u for i, u in enumerate(utts) if SETS[i % len(SETS)] == s} for s in set(SETS)}
    rows = split(data, tmp_path / "fixed", "fixed")
    out = tmp_path / "fixed"
    assert len(rows) == 1 and [p.name for p in fold_dirs(out)] == ["fold01"]
    fold = out / "fold01"
    got = {name: set(read_table(fold / name / "utt2spk")) for name in ("train", "valid", "test", "test2")}
    assert got == {"train": want["train"], "valid": want["dev"], "test": want["test"], "test2": want["test2"]}
    for name in got:
        validate_data_dir(fold / name)
    # Selection (valid) and training never hold a test utterance; the final model trains on train + dev only.
    assert not (got["train"] | got["valid"]) & (got["test"] | got["test2"])
    assert set(read_table(out / "final/train/utt2spk")) == want["train"] | want["dev"]
    assert read_table(out / "protocol")["test_sets"] == "test,test2"
    assert rows[0]["valid"] == len(want["dev"]) and rows[0]["test_utts"] == len(want["test"])
    # The recipe runs this fold and decodes both test sets; the default protocols keep the single test set.
    assert fold_numbers(out) == [1]
    assert fold_test_sets(out, [1]) == ["test", "test2"]
    assert "decode_names=(decode_test decode_test2)" in fold_assignments([1], fold_test_sets(out, [1]))
    assert "test_sets=(test)\ndecode_names=(decode_test)" in fold_assignments([1, 2])
    assert run_names("fixed", "share", "phncls", "conf/train_mini.yaml").folds_dir == "data/fixed"

    # A rerun whose utt2set no longer has test2 leaves no stale test2 dir behind.
    with_sets(data, lambda i: {"test2": "test"}.get(SETS[i % len(SETS)], SETS[i % len(SETS)]))
    split(data, out, "fixed")
    assert fold_test_sets(out, [1]) == ["test"]


@pytest.mark.parametrize("lines, match", [
    (["{0} train", "{1} dev", "{2} valid"], r"utt2set:3: unknown set 'valid'"),
    (["{0} train", "{1} dev", "{0} test"], r"utt2set:3: utterance '.*' is in two sets \(train at line 1, test here\)"),
    (["{0} train", "{1} test_2"], r"utt2set:2: unknown set 'test_2'"),
    (["{0} train extra"], r"utt2set:1: expected 'utterance set'"),
])
def test_bad_utt2set_names_file_and_line(make_data_dir, tmp_path, lines, match):
    data = make_data_dir(n_spk=2, n_utt=2)
    utts = sorted(read_table(data / "utt2spk"))
    (data / "utt2set").write_text("".join(line.format(*utts) + "\n" for line in lines))
    with pytest.raises(MtlserError, match=match):
        split(data, tmp_path / "fixed", "fixed")


def test_fixed_needs_every_set_and_no_other_valid_choice(make_data_dir, tmp_path):
    data = make_data_dir(n_spk=2, n_utt=3)
    with pytest.raises(MtlserError, match=r"utt2set: no such file"):
        split(data, tmp_path / "f", "fixed")
    with_sets(data, lambda i: ("train", "test")[i % 2])
    with pytest.raises(MtlserError, match=r"no utterance in set 'dev'"):
        split(data, tmp_path / "f", "fixed")
    with_sets(data, lambda i: ("train", "dev", "test2")[i % 3])
    with pytest.raises(MtlserError, match=r"no utterance in set 'test'.*the main test set"):
        split(data, tmp_path / "f", "fixed")
    with pytest.raises(MtlserError, match=r"valid set is the corpus's development set"):
        split(data, tmp_path / "f", "fixed", valid="none")
    with pytest.raises(MtlserError, match=r"leave --valid at its default"):
        run_names("fixed", "none", "phncls", "c.yaml")


def test_training_and_selection_never_read_a_test_set(make_data_dir, tiny_config, tmp_path):
    """The fold trained with its test sets, and again with them deleted: the same selected epoch and weights."""
    import os
    import shutil
    import subprocess
    import sys

    from mtlser.data.datadir import DataDir
    from mtlser.text.phone_classes import PhoneClassMap, phncls_token_list
    from mtlser.text.tokenize import write_token_list
    from tests.conftest import ROOT

    data = make_data_dir(n_spk=4, n_utt=6, seconds=0.8)
    dd = DataDir.load(data)
    idx = {"ang": 0, "hap": 1, "sad": 2, "neu": 3}
    dd.tables["text_phncls"] = {u: f"S{idx[e]} V{idx[e]} L{idx[e]}" for u, e in dd["utt2emo"].items()}
    dd.write(data)
    with_sets(data, lambda i: ("train", "train", "dev", "test", "train", "test2")[i % 6])
    write_token_list(tmp_path / "token_list", phncls_token_list(PhoneClassMap.load().classes, 4))
    split(data, tmp_path / "fixed", "fixed")
    config = tiny_config(train={"epochs": 2, "model_selection": "valid"})
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def train(exp):
        r = subprocess.run([sys.executable, "-m", "mtlser.train", "--config", str(config), "--folds-dir",
                            str(tmp_path / "fixed"), "--fold", "1", "--token-list",
                            str(tmp_path / "token_list"), "--exp-dir", str(exp)],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
        return (exp / "fold01" / "best.json").read_text(), (exp / "fold01" / "best.safetensors").read_bytes()

    first = train(tmp_path / "exp_a")
    for name in ("test", "test2"):
        shutil.rmtree(tmp_path / "fixed" / "fold01" / name)
    assert train(tmp_path / "exp_b") == first
    assert '"selection": "valid"' in first[0]


def test_each_test_set_is_scored_and_listed_in_results(make_data_dir, tiny_config, tmp_path):
    """Stages 3-5 through their commands on a fixed fold with test and test2: both decoded and scored, the
    aggregate gives each (results.json test_sets, RESULTS.md's Test sets table); an unscored one is named."""
    import json

    from mtlser.infer.__main__ import main as infer_main
    from mtlser.score.__main__ import main as score_main
    from mtlser.text.phone_classes import PhoneClassMap, phncls_token_list
    from mtlser.text.tokenize import write_token_list
    from mtlser.train.__main__ import main as train_main

    data = make_data_dir(n_spk=4, n_utt=6, seconds=0.5)
    utts = with_sets(data, lambda i: ("train", "train", "dev", "test", "train", "test2")[i % 6])
    split(data, tmp_path / "fixed", "fixed")
    write_token_list(tmp_path / "tokens.txt", phncls_token_list(PhoneClassMap.load().classes, 4))
    exp = tmp_path / "exp"
    assert train_main(["--config", str(tiny_config(loss={"lambda": 0.0}, train={"epochs": 1})), "--folds-dir",
                       str(tmp_path / "fixed"), "--fold", "1", "--token-list", str(tmp_path / "tokens.txt"),
                       "--exp-dir", str(exp)]) == 0
    for name in ("test", "test2"):
        assert infer_main(["--model-dir", str(exp), "--folds-dir", str(tmp_path / "fixed"), "--fold", "1",
                           "--test-set", name, "--no-progress"]) == 0
        assert score_main(["fold", str(exp / "fold01" / f"decode_{name}")]) == 0
    assert score_main(["aggregate", str(exp)]) == 0
    r = json.loads((exp / "results.json").read_text())
    t2 = json.loads((exp / "fold01" / "decode_test2" / "result.json").read_text())
    assert r["n"] == sum(1 for i in range(len(utts)) if i % 6 == 3)
    assert list(r["test_sets"]) == ["test2"] and r["test_sets"]["test2"]["n"] == t2["n"] == len(utts) // 6
    assert r["test_sets"]["test2"]["ua"] == t2["ua"] and r["test_sets"]["test2"]["macro_f1"] == t2["macro_f1"]
    md = (exp / "RESULTS.md").read_text()
    assert "### Test sets" in md and f"|test|decode_test|{r['n']}|{100 * r['wa']:.2f}|{100 * r['ua']:.2f}|" in md
    assert f"|test2|decode_test2|{t2['n']}|{100 * t2['wa']:.2f}|{100 * t2['ua']:.2f}|{100 * t2['macro_f1']:.2f}|" in md
    (exp / "fold01" / "decode_test2" / "result.json").unlink()
    with pytest.raises(MtlserError, match=r"decode_test2/result.json: missing, but .*fold01 has the test set "
                                          r"test2; decode and score it"):
        score_main(["aggregate", str(exp)])
    # A seed group of two such experiments lists test2 over both seeds.
    import shutil

    import yaml
    assert score_main(["fold", str(exp / "fold01" / "decode_test2")]) == 0
    assert score_main(["aggregate", str(exp)]) == 0
    other = tmp_path / "exp_seed9"
    shutil.copytree(exp, other)
    cfg = yaml.safe_load((other / "fold01" / "config.yaml").read_text())
    cfg["train"]["seed"] = 9
    (other / "fold01" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert score_main(["aggregate", str(other)]) == 0
    assert score_main(["aggregate", str(exp), str(other), "--seeds-out", str(tmp_path / "group")]) == 0
    g = json.loads((tmp_path / "group" / "results.json").read_text())
    assert g["test_sets"]["test2"]["num_seeds"] == 2 and g["test_sets"]["test2"]["ua"] == pytest.approx(t2["ua"])
    assert "|test2|decode_test2|" in (tmp_path / "group" / "RESULTS.md").read_text()
