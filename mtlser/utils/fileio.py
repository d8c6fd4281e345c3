"""Files the stages write and derive, safely.

- Atomic writes: nothing a stage writes is ever half-written. A killed stage
  leaves either the old output or the new one, never a mix, so a rerun can trust
  whatever it finds (the marker-file idea of icefall's prep scripts, applied to
  every output).
- Ids as file names (:func:`path_in`): the one way an utterance id becomes a
  path, so no id can name a file outside its directory.
- Source identity (:func:`file_identity`): what derived data (converted audio,
  cached CNN features) is keyed by, so it is redone when its source changes.
- Permissions: outputs get the mode of a plain ``open``/``mkdir`` under the
  user's umask (0644 files and 0755 dirs with the usual 022), not the private
  0600/0700 that ``mkstemp``/``mkdtemp`` give their temp names: results are
  shared with lab-mates.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from mtlser.utils import MtlserError, write_failure


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def created_mode(is_dir: bool) -> int:
    """The mode open() (0666) or mkdir() (0777) would give a new file or dir under the current umask."""
    return (0o777 if is_dir else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Open a temp file next to ``path``; on success rename it onto ``path``.

    On an exception the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        binary = "b" in mode
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else "\n") as f:
            os.fchmod(f.fileno(), created_mode(is_dir=False))  # mkstemp's 0600 would hide it from lab-mates
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _record_written(path)


def _record_written(path: Path) -> None:
    """A file mtlser writes into a directory that :func:`atomic_dir` made (a later stage's ``text_phn`` in a
    data dir) joins that directory's list, so that rewriting the directory may replace it."""
    marker = path.parent / WRITTEN_BY_MTLSER
    if path.name != WRITTEN_BY_MTLSER and marker.is_file() and path.name not in _written_by_mtlser(path.parent):
        with open(marker, "a", encoding="utf-8") as f:
            f.write(path.name + "\n")


class RecordingWriter:
    """A binary file wrapper that remembers the OSError of a failed write. torch.save reports a failed write
    as an unrelated C++ message ("unexpected pos ..."); this keeps the real reason (disk full, ulimit -f)."""

    def __init__(self, f):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


@contextlib.contextmanager
def atomic_save(path: str | os.PathLike, intact: str = "") -> Iterator[RecordingWriter]:
    """:func:`atomic_open` for binary writers (torch.save); a write the file system refuses becomes one
    MtlserError naming the file, the reason and ``intact`` (what the user still has), and nothing is left
    half-written."""
    rec: RecordingWriter | None = None
    try:
        with atomic_open(path, "wb") as f:
            rec = RecordingWriter(f)
            yield rec
    except MtlserError:
        raise
    except Exception as e:
        failure = write_failure(path, rec.error if rec is not None and rec.error else e, intact)
        if failure is None:
            raise
        raise failure from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None,
                            intact: str = "") -> None:
    """Every safetensors file mtlser writes: serialised in memory, then :func:`atomic_save` (umask's mode,
    one-line failure, no partial file). safetensors' own ``save_file`` creates its files 0600."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    with atomic_save(path, intact) as f:
        f.write(data)


#: The file mtlser writes into every directory it creates as a whole (:func:`atomic_dir`): what makes the
#: directory recognisably mtlser's, and the list of the files mtlser wrote there.
WRITTEN_BY_MTLSER = ".mtlser-written"


def _files_under(d: Path) -> set[str]:
    """Relative paths of everything under ``d`` that is not a directory (files, links)."""
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_symlink() or not p.is_dir()}


def _written_by_mtlser(d: Path) -> set[str] | None:
    """The files mtlser wrote into ``d`` (its :data:`WRITTEN_BY_MTLSER` list), or None when mtlser did not make it."""
    marker = d / WRITTEN_BY_MTLSER
    if not marker.is_file():
        return None
    return {line for line in marker.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")}


def _resolved(p: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(p))


def _inside(inner: str, outer: str) -> bool:
    return inner != outer and os.path.commonpath([inner, outer]) == outer


def check_output(out: str | os.PathLike, inputs=(), what: str = "--out", *, around=(), is_dir: bool = False,
                 overwrite: bool | None = None, expect=()) -> None:
    """Refuse, before any work, an output that would destroy what the user did not name: the one check every
    writer of a user-named path makes.

    ``out`` must not be, contain or lie inside any of ``inputs`` (symlinks resolved), nor be or contain any of
    ``around`` (inputs that outputs may sit in, e.g. a model dir and its decode dirs). A directory written as a
    whole (``is_dir``) must not be or contain the current or home directory, and an existing one must hold
    only files that mtlser wrote there (:data:`WRITTEN_BY_MTLSER`) or that the writer rewrites (``expect``),
    unless ``overwrite``; ``overwrite`` None means the command has no ``--overwrite`` to offer. (The same rule
    as :func:`atomic_dir`'s, checked before the work.)
    """
    o = _resolved(out)
    for inp in [i for i in inputs if i is not None]:
        i = _resolved(inp)
        if o == i or _inside(i, o) or _inside(o, i):
            how = "is" if o == i else "contains" if _inside(i, o) else "lies inside"
            raise MtlserError(f"{what} {out}: {how} the input {inp}, which writing it would destroy; choose a path "
                              "outside the inputs")
    protected = [(a, "the input " + str(a)) for a in around if a is not None]
    if is_dir:
        protected += [(Path.cwd(), "the current directory"), (Path.home(), "your home directory")]
    for a, name in protected:
        i = _resolved(a)
        if o == i or _inside(i, o):
            raise MtlserError(f"{what} {out}: {'is' if o == i else 'contains'} {name}, which writing it would "
                              "destroy; choose a path outside it")
    if is_dir:
        refuse_foreign_dir(Path(out), what, overwrite, expect)


def refuse_foreign_dir(path: Path, what: str = "--out", overwrite: bool | None = None, expect=()) -> None:
    """Refuse to write ``path`` as a whole when it is a file, or an existing dir holding files that mtlser did
    not write there and will not rewrite (``expect``), unless ``overwrite``: the user named it to be replaced."""
    if path.exists() and not path.is_dir():
        raise MtlserError(f"{what} {path}: a file, not a directory; name a directory to write")
    if overwrite or not path.is_dir():
        return
    written = _written_by_mtlser(path)
    foreign = sorted(_files_under(path) - (written or set()) - set(expect) - {WRITTEN_BY_MTLSER})
    if not foreign:
        return
    named = f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}"
    raise MtlserError(f"{what} {path}: " + (f"an existing directory that mtlser did not write ({named})"
                                            if written is None else
                                            f"holds {len(foreign)} file(s) that mtlser did not write ({named})")
                      + "; choose another path, " + ("or add --overwrite to replace it and everything in it"
                                                     if overwrite is not None else "or move them away first"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False, what: str | None = None,
               older_ours: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Yield an empty temp directory; on success it replaces ``path`` as a whole.

    An existing ``path`` is moved aside first and deleted only after the new one is in place, so at every
    moment ``path`` is either complete-old or complete-new. Only what mtlser wrote is ever deleted: the new
    dir lists its files in :data:`WRITTEN_BY_MTLSER`, and an existing ``path`` is replaced only when each of
    its files is either on its own list or rewritten by the new dir, unless ``overwrite`` (the user named
    it to be replaced: ``--overwrite``). ``older_ours`` tells, for a dir without that list (written by an
    mtlser from before the lists), which file names its writers made: those count as mtlser's, so upgrading
    mtlser does not make a rerun refuse its own earlier output. A write the file system refuses (disk full) is
    one MtlserError naming ``path``, and nothing is left of the new dir.
    """
    path = Path(path)
    what = f"{what} {path}" if what else str(path)
    if path.exists() and not path.is_dir():
        raise MtlserError(f"{what}: a file, not a directory; name a directory to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, created_mode(is_dir=True))  # mkdtemp's 0700 would hide it from lab-mates
        yield tmp
        for f in tmp.rglob("*"):  # libraries writing into it (save_pretrained's safetensors) leave 0600 files
            if f.is_file() and not f.is_symlink():
                os.chmod(f, created_mode(is_dir=False) | (f.stat().st_mode & 0o111 & ~current_umask()))
        new = _files_under(tmp) - {WRITTEN_BY_MTLSER}
        with open(tmp / WRITTEN_BY_MTLSER, "w", encoding="utf-8") as f:
            f.write("# written by mtlser, which replaces this directory only when it wrote each of these files\n"
                    + "".join(f"{name}\n" for name in sorted(new)))
        if path.is_dir() and not overwrite:
            written = _written_by_mtlser(path)
            if written is None and older_ours is not None:
                written = {name for name in _files_under(path) if older_ours(name)}
            foreign = sorted(_files_under(path) - (written or set()) - new - {WRITTEN_BY_MTLSER})
            if foreign:
                raise MtlserError(f"{what}: holds {len(foreign)} file(s) that mtlser did not write "
                                  f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); nothing was "
                                  "written: move them away or choose another path (--overwrite, where a command "
                                  "offers it, replaces the directory and everything in it)")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, MtlserError):
            raise
        failure = write_failure(what, e, f"nothing was written to {path} (what was there is intact)")
        if failure is None:
            raise
        raise failure from None
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_written_dir(path: Path) -> None:
    """Remove a directory that mtlser wrote (:func:`atomic_dir`), never seen half-deleted: renamed away first,
    then deleted. One holding files mtlser did not write there is refused, naming them."""
    if not path.exists():
        return
    foreign = sorted(_files_under(path) - (_written_by_mtlser(path) or set()) - {WRITTEN_BY_MTLSER})
    if foreign:
        raise MtlserError(f"{path}: should be removed (it is stale), but holds {len(foreign)} file(s) that mtlser "
                          f"did not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); move "
                          "them away or delete the directory yourself")
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.rmdir(aside)
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


# ----------------------------------------------------------------------------- ids as file names
#: What an utterance id may be made of when it names a file: letters, digits, '_', '-', '.', not starting
#: with '.' or '-' (no hidden files, no options), so it can never hold a path separator or be '..'.
SAFE_NAME_CHARS = "letters A-Z a-z, digits, '_', '-' and '.' (not first)"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def is_safe_name(name: str) -> bool:
    """Whether ``name`` can be a file name on its own: see :data:`SAFE_NAME_CHARS`."""
    return bool(_SAFE_NAME.match(name)) and len(name.encode("utf-8")) <= 200


def path_in(directory: str | os.PathLike, name: str, suffix: str = "") -> Path:
    """``directory / (name + suffix)``, refusing a ``name`` that is not a safe file name or would leave
    ``directory``.

    Every place that turns an id (an utterance, a turn name) into a path goes through here, so an id
    such as ``../../x`` or ``a/b`` is an error naming the id, never a file outside the directory.
    """
    if not is_safe_name(name):
        raise MtlserError(f"'{name}' cannot be a file name under {directory}: ids may use only {SAFE_NAME_CHARS} "
                          "(at most 200 bytes); rename it in the data dir (local/data.sh)")
    directory = Path(directory)
    path = directory / f"{name}{suffix}"
    # The pattern already excludes separators; this guards the suffix and symlinked parents alike.
    if os.path.commonpath([os.path.abspath(directory), os.path.abspath(path)]) != os.path.abspath(directory):
        raise MtlserError(f"'{name}{suffix}' would leave {directory}; refusing to use it as a file name")
    return path


# ----------------------------------------------------------------------------- derived data
def file_identity(rxfile: str) -> str:
    """What a derived file (a converted wav, cached CNN features) is keyed by: the source's absolute path,
    size and modification time in ns; for a Kaldi pipe (``cmd |``), the command itself.

    A source rewritten in place, or a wav.scp entry pointing elsewhere, gets a new identity, so whatever
    was derived from the old one is redone instead of reused.
    """
    if rxfile.endswith("|"):
        return "pipe:" + rxfile
    try:
        st = os.stat(rxfile)
    except OSError as e:
        raise MtlserError(f"{rxfile}: cannot read it ({e.strerror})") from None
    return f"{os.path.abspath(rxfile)}:{st.st_size}:{st.st_mtime_ns}"
