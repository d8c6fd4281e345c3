"""The experiment layout has one owner (mtlser.expdir): its names, readers and writers."""

from __future__ import annotations

import re
from pathlib import Path

from mtlser import expdir
from mtlser.data.datadir import write_table
from mtlser.data.fold_names import fold_dirs

ROOT = Path(__file__).resolve().parents[1]


def test_no_other_module_spells_a_layout_file_name():
    names = [expdir.MODEL_YAML, expdir.CONFIG_YAML, expdir.BEST_JSON, expdir.BEST_WEIGHTS, expdir.CHECKPOINT,
             expdir.HISTORY_TSV, expdir.ENV_JSON, expdir.DECODE_TEST, expdir.UTT2EMO_HYP, expdir.TEXT_HYP,
             expdir.RESULT_JSON, expdir.RESULT_TXT, expdir.RESULTS_JSON, expdir.RESULTS_MD]
    literal = re.compile("|".join(re.escape(f'"{n}"') for n in names))
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
             for p in sorted((ROOT / "mtlser").rglob("*.py")) if p.name != "expdir.py"
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if literal.search(line)]
    assert found == [], "name it through mtlser.expdir"


def test_fold_dirs_are_foldNN_and_model_dirs_hold_a_model(tmp_path):
    for name in ("fold01", "fold02", "fold10", "fold01.bak", "fold02_old"):
        (tmp_path / name).mkdir()
    (tmp_path / "fold03").write_text("a file, not a fold\n")
    assert [p.name for p in fold_dirs(tmp_path)] == ["fold01", "fold02", "fold10"]
    (tmp_path / "fold02" / expdir.MODEL_YAML).write_text("emotions: [a, b]\n")
    (tmp_path / "fold01.bak" / expdir.MODEL_YAML).write_text("emotions: [a, b]\n")
    assert [p.name for p in expdir.model_dirs(tmp_path)] == ["fold02"]
    assert expdir.read_model_info(tmp_path / "fold02") == {"emotions": ["a", "b"]}
    assert expdir.read_model_info(tmp_path / "fold01") is None and expdir.read_best(tmp_path / "fold01") is None


def test_a_decode_dir_points_at_its_data_and_the_protocol_is_found_from_the_experiment(tmp_path):
    folds = tmp_path / "data" / "loso"
    test = folds / "fold01" / "test"
    test.mkdir(parents=True)
    write_table(folds / expdir.PROTOCOL, {"protocol": "loso", "valid": "none"})
    decode = tmp_path / "exp" / "tag" / "fold01" / expdir.DECODE_TEST
    expdir.write_decode(decode, test, {"u1": "a"}, {"u1": "0.9 0.1"}, None, {"u2": "too short"})
    assert (decode / expdir.UTT2ERROR).read_text() == "u2 too short\n"
    assert not (decode / expdir.TEXT_HYP).exists()  # no CTC head, no text_hyp
    expdir.write_decode(decode, test, {"u1": "a", "u2": "b"}, {"u1": "0.9 0.1", "u2": "0.2 0.8"}, {"u1": "x"}, {})
    assert not (decode / expdir.UTT2ERROR).exists()  # an earlier decode's failures do not linger
    assert (decode / expdir.TEXT_HYP).read_text() == "u1 x\n"
    assert expdir.decoded_data_dir(decode) == test.resolve()
    assert expdir.experiment_folds_dir(tmp_path / "exp" / "tag") == folds.resolve()
    assert expdir.read_protocol(folds) == {"protocol": "loso", "valid": "none"}
    assert expdir.read_protocol(tmp_path) == {} and expdir.experiment_folds_dir(tmp_path) is None


def test_environment_is_recorded_alike_with_and_without_torch_imported():
    """Scoring records where it ran without importing torch where it can (mtlser.expdir.environment): the record
    is the one a process that imported torch and torchaudio writes, torch's local version part included."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, sys{}\nfrom mtlser import expdir\nenv = expdir.environment()\nenv.pop('date')\n"
            "print(json.dumps([env, 'torch' in sys.modules, expdir._no_gpu_without_torch()]))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def record(imports: str):
        out = subprocess.run([sys.executable, "-c", code.format(imports)], capture_output=True, text=True, env=env,
                             cwd=ROOT, check=True).stdout
        return json.loads(out)

    cold, imported_torch, no_gpu = record("")
    warm, _, _ = record(", torch, torchaudio")
    assert cold == warm
    import torch

    assert cold["torch"] == torch.__version__ and cold["gpu"] == ("none" if not torch.cuda.is_available() else
                                                                  torch.cuda.get_device_name(0))
    # Where the torch build or the machine says there is no GPU, torch is not imported at all.
    assert imported_torch is not no_gpu
