"""The wheel of the mtlser that trained an experiment, beside its packs (stage 6), so that a pack's card
names an install file that exists: ``packed/mtlser-<version>-py3-none-any.whl``.

Built offline with the venv's own build backend (``pip wheel --no-deps --no-build-isolation --no-index``:
setuptools >= 70.1, which has bdist_wheel built in; tools/requirements.txt pins it) from a copy of the
source, so nothing is written into the repository. The source is the training commit (the first fold's
env.json) taken from git when that commit was clean and git has it; otherwise the source tree as it is
now, with a warning saying which, and the card says the same. Zip timestamps are fixed
(SOURCE_DATE_EPOCH), so the same source gives the same bytes.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

#: What setuptools reads to build the wheel (pyproject.toml names README.md as the long description).
SOURCE_FILES = ("pyproject.toml", "README.md", "mtlser")
#: 1980-01-01, the earliest time a zip records: wheels of one source are byte-identical.
SOURCE_DATE_EPOCH = "315532800"


def source_root() -> Path | None:
    """The source tree of the running mtlser (its pyproject.toml beside the package), None when installed."""
    import mtlser

    root = Path(mtlser.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True)


def _export_source(root: Path, dest: Path, commit: str | None, dirty: bool | None) -> str:
    """The source to build into ``dest``: the training commit from git when possible, else the tree as it is.
    Returns what it is, in words (the card's and the log's)."""
    commit = None if commit in (None, "", "unknown") else commit
    known = commit and shutil.which("git") and _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0
    if known and not dirty:
        archive = _git(root, "archive", "--format=tar", commit, *SOURCE_FILES)
        if archive.returncode == 0:
            dest.mkdir()
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
            return f"mtlser at the training commit {commit}"
    dest.mkdir()
    for name in SOURCE_FILES:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(src, dest / name)
    why = ("the training run had uncommitted changes" if dirty else
           "the training commit is not recorded" if not commit else f"git has no commit {commit} in {root}")
    logger.warning("%s, so the mtlser wheel is built from the source in %s as it is now; the models may need "
                   "that commit's mtlser", why, root)
    return f"mtlser source in {root} as it was at packing ({why})"


def build_wheel(out_dir: str | Path, commit: str | None = None, dirty: bool | None = None) -> tuple[Path, str]:
    """``OUT_DIR/mtlser-<version>-py3-none-any.whl`` of the training commit (see the module doc); returns the
    wheel's path and where its source came from."""
    root = source_root()
    if root is None:
        raise MtlserError(f"{Path(sys.modules['mtlser'].__file__).parent}: mtlser is installed without its source "
                          "tree (no pyproject.toml beside it), so stage 6 cannot build its wheel; run stage 6 from "
                          "a clone of mtlser")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="mtlser-wheel-") as tmp:
        src, dist = Path(tmp) / "src", Path(tmp) / "dist"
        source = _export_source(root, src, commit, dirty)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--quiet", "--wheel-dir", str(dist), str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True,
                           env=dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH))
        wheels = sorted(dist.glob("mtlser-*-py3-none-any.whl")) if r.returncode == 0 else []
        if len(wheels) != 1:
            err = [line.strip() for line in (r.stderr + r.stdout).splitlines() if "error" in line.lower()]
            why = err[-1] if err else f"exit {r.returncode}"
            raise MtlserError(f"{out_dir}: building the mtlser wheel failed ({why}); it needs setuptools >= 70.1 "
                              f"in {sys.prefix} (tools/install.sh installs it)")
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / wheels[0].name
        atomic_write_bytes(out, wheels[0].read_bytes())
    logger.info("built %s from the %s (pip install it beside torch; the cards say how)", out, source)
    return out, source
