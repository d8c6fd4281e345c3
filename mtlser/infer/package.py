"""What a trained model is on disk, and reading it by file name from a directory or a zip.

A **model dir** is what stage 3 writes for a fold (``exp/<tag>/foldNN``), what training on all
speakers writes (``exp/<tag>/final``), or a pack unzipped::

    model.yaml         backbone arch and architecture arguments, emotions (class-index order), vocab size
    config.yaml        the resolved training config
    token_list         CTC tokens, <blank> first
    best.safetensors   the weights (a pack names them model.safetensors)
    card.json          (packs) the model card's facts; README.md its text

An **ensemble** is a dir (or pack) holding ``ensemble.yaml``: the member models, as paths
relative to it, whose emotion probabilities are averaged::

    members: [../fold01, ../fold02, ...]      # exp/<tag>/ensemble/ensemble.yaml
    members: [members/fold01, ...]            # inside a pack

A **pack** (``python -m mtlser.export pack``) is a zip of one of the two. It is read in place,
member by member, never extracted, so no name inside it can write anywhere. Its ``card.json`` records the
sha256 of each of its other files (``files_sha256``); every file read from a pack (or an unzipped one) is
checked against it, and one that changed is refused, named. Packs written before these digests load as
they did, unchecked, with a warning that says to re-pack them. The emotion list of model.yaml (what the
labels follow), of config.yaml (data.emotions) and of the card must agree, or the model is refused with
the three lists.

This module is the one owner of these names; :mod:`mtlser.export` writes what it reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import zipfile
from pathlib import Path

import yaml

from mtlser.expdir import BEST_WEIGHTS, CONFIG_YAML, MODEL_YAML, TOKEN_LIST
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

ENSEMBLE_YAML = "ensemble.yaml"
CARD_JSON = "card.json"
CARD_MD = "README.md"
#: card.json's record of every other file of a pack: name inside the pack -> sha256 (hex).
DIGESTS = "files_sha256"
#: The weights a loader takes when none is named: a pack's, then a training dir's selected model.
WEIGHTS = ("model.safetensors", BEST_WEIGHTS)
#: The files that make a single model (besides its weights).
MODEL_FILES = (MODEL_YAML, CONFIG_YAML, TOKEN_LIST)


class ModelFiles:
    """Files of a model dir, an ensemble dir, or a pack, read by name (see the module doc)."""

    def __init__(self, location: str, base: Path | None = None, archive: zipfile.ZipFile | None = None,
                 prefix: str = "", digests: dict[str, str] | None = None, card: dict | None = None):
        assert (base is None) != (archive is None), "a directory or a zip"
        self.location = location  # the path the user gave, for messages
        self.base = base
        self.archive = archive
        self.prefix = prefix
        #: The pack's sha256 of each file, keyed relative to this model (a member's: relative to the member);
        #: None: nothing to check (a training dir, or a pack written before digests).
        self.digests = digests
        #: The pack's card.json (an ensemble member: its pack's), None for a training dir.
        self.card = card

    @classmethod
    def open(cls, path: str | Path) -> "ModelFiles":
        path = Path(path)
        if path.is_dir():
            return cls(str(path), base=path)._read_card()
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise MtlserError(f"{path}: neither a model dir nor a zip written by `python -m mtlser.export pack`")
            try:
                archive = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise MtlserError(f"{path}: cannot read the zip ({e})") from None
            return cls(str(path), archive=archive)._read_card()
        raise MtlserError(f"{path}: not found; give a model dir (exp/<tag>/foldNN or final), an ensemble dir, "
                          "or a .zip written by `python -m mtlser.export pack`")

    def _read_card(self) -> "ModelFiles":
        """A pack's card.json and its digests (see the module doc); a dir without a card is a training dir."""
        if not self.has(CARD_JSON):
            return self
        try:
            card = json.loads(self._read(CARD_JSON))
        except (ValueError, UnicodeDecodeError) as e:
            raise MtlserError(f"{self.where(CARD_JSON)}: not valid JSON ({e}); re-pack the model from its training "
                              "dir (python -m mtlser.export pack)") from None
        if not isinstance(card, dict):
            raise MtlserError(f"{self.where(CARD_JSON)}: expected a JSON object; re-pack the model from its training "
                              "dir (python -m mtlser.export pack)")
        self.card = card
        digests = card.get(DIGESTS)
        if digests is None:
            logger.warning("%s: packed without file digests (before they were recorded): its files are loaded "
                           "unchecked; re-pack it from its training dir (python -m mtlser.export pack) to have "
                           "them checked", self.location)
        elif not isinstance(digests, dict):
            raise MtlserError(f"{self.where(CARD_JSON)}: {DIGESTS} is not a mapping of file names to sha256; "
                              "re-pack the model from its training dir (python -m mtlser.export pack)")
        else:
            self.digests = digests
        return self

    def check_digest(self, name: str, data: bytes | None = None) -> None:
        """Refuse a file of a pack that differs from the sha256 its card records (``data``: its bytes, when
        read already; else the file is hashed where it lies)."""
        expected = (self.digests or {}).get(posixpath.normpath(name))
        if expected is None:
            return
        if data is not None:
            actual = hashlib.sha256(data).hexdigest()
        else:
            h = hashlib.sha256()
            with open(self.base / name, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            actual = h.hexdigest()
        if actual != expected:
            raise MtlserError(f"{self.where(name)}: changed since it was packed (sha256 {actual[:12]}…, the pack's "
                              f"{CARD_JSON} records {expected[:12]}…); re-pack the model from its training dir "
                              "(python -m mtlser.export pack), or use an unchanged copy of the pack")

    @property
    def is_ensemble(self) -> bool:
        return self.has(ENSEMBLE_YAML)

    def _key(self, name: str) -> str:
        key = posixpath.normpath(posixpath.join(self.prefix, name))
        if key == ".." or key.startswith("../") or key.startswith("/"):
            raise MtlserError(f"{self.location}: '{name}' points outside the pack")
        return key

    def where(self, name: str) -> str:
        """How a message names a file: a path, or ``pack.zip:member/path``."""
        if self.base is not None:
            return str(self.base / name)
        return f"{self.location}:{self._key(name)}"

    def has(self, name: str) -> bool:
        if self.base is not None:
            return (self.base / name).is_file()
        try:
            self.archive.getinfo(self._key(name))
        except KeyError:
            return False
        return True

    def read_bytes(self, name: str) -> bytes:
        if not self.has(name):
            raise MtlserError(f"{self.where(name)}: missing; a model needs {', '.join(MODEL_FILES)} and weights "
                              f"({' or '.join(WEIGHTS)}): is this a finished training dir (stage 3) or a pack?")
        data = self._read(name)
        self.check_digest(name, data)
        return data

    def _read(self, name: str) -> bytes:
        if self.base is not None:
            return (self.base / name).read_bytes()
        try:
            return self.archive.read(self._key(name))
        except (zipfile.BadZipFile, OSError, EOFError) as e:  # a truncated or damaged zip
            raise MtlserError(f"{self.where(name)}: cannot read it from the zip ({e})") from None

    def read_text(self, name: str) -> str:
        try:
            return self.read_bytes(name).decode("utf-8")
        except UnicodeDecodeError as e:
            raise MtlserError(f"{self.where(name)}: not UTF-8 text ({e})") from None

    def read_yaml(self, name: str) -> dict:
        try:
            data = yaml.safe_load(self.read_text(name))
        except yaml.YAMLError as e:
            raise MtlserError(f"{self.where(name)}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise MtlserError(f"{self.where(name)}: expected a mapping, got {type(data).__name__}")
        return data

    def member(self, rel: str) -> "ModelFiles":
        """An ensemble member, ``rel`` relative to this one (with the pack's digests of its files)."""
        digests = None
        if self.digests is not None:
            under = posixpath.normpath(rel) + "/"
            digests = {k[len(under):]: v for k, v in self.digests.items() if k.startswith(under)}
        if self.base is not None:
            return ModelFiles(str(self.base / rel), base=(self.base / rel).resolve(), digests=digests, card=self.card)
        return ModelFiles(self.location, archive=self.archive, prefix=self._key(rel), digests=digests, card=self.card)

    def weights_name(self, weights: str | None = None) -> str:
        """The weights file to load: ``weights`` when given, else the first of :data:`WEIGHTS` present."""
        if weights is not None:
            if not self.has(weights):
                raise MtlserError(f"{self.where(weights)}: no such weights file")
            return weights
        for name in WEIGHTS:
            if self.has(name):
                return name
        raise MtlserError(f"{self.where(WEIGHTS[-1])}: missing (no {' or '.join(WEIGHTS)}); is this a finished "
                          "training dir (stage 3) or a pack?")

    def members(self) -> list[tuple[str, "ModelFiles"]]:
        """(name, files) of each member of an ensemble, in ensemble.yaml's order."""
        spec = self.read_yaml(ENSEMBLE_YAML)
        members = spec.get("members")
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise MtlserError(f"{self.where(ENSEMBLE_YAML)}: expected `members: [path, ...]` (paths relative to it)")
        out = []
        for rel in members:
            files = self.member(rel)
            if files.is_ensemble:
                raise MtlserError(f"{self.where(ENSEMBLE_YAML)}: member {rel} is an ensemble itself; list models")
            out.append((posixpath.basename(posixpath.normpath(rel)), files))
        return out


def check_trained(path: str | Path, allow_unfinished: bool = False) -> None:
    """Refuse a training dir, or an ensemble dir with a member, whose training did not finish
    (mtlser.expdir.check_finished), unless ``allow_unfinished``. A pack says so on its card instead."""
    from mtlser.expdir import check_finished

    path = Path(path)
    if not path.is_dir():
        return
    files = ModelFiles(str(path), base=path)  # its card, if any, is read (and warned about) by the loader
    for member in ([m for _, m in files.members()] if files.is_ensemble else [files]):
        check_finished(member.base, allow_unfinished)


def ensemble_text(members: list[str], emotions: list[str], note: str = "") -> str:
    """The text of an ensemble.yaml: the members (paths relative to it); their probabilities are averaged."""
    spec = {"combine": "mean of the members' emotion probabilities", "emotions": list(emotions),
            "members": list(members)}
    header = "# An ensemble of mtlser models (mtlser.infer.package).\n" + (f"# {note}\n" if note else "")
    return header + yaml.safe_dump(spec, sort_keys=False)


def write_ensemble(directory: str | Path, members: list[str], emotions: list[str], note: str = "") -> Path:
    """Write ``directory/ensemble.yaml`` (see :func:`ensemble_text`)."""
    from mtlser.utils.fileio import atomic_write_text

    path = Path(directory) / ENSEMBLE_YAML
    atomic_write_text(path, ensemble_text(members, emotions, note))
    return path
