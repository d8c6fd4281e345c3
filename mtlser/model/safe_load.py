"""Reading torch checkpoints that hold foreign Python objects, without running their code.

fairseq checkpoints (``wav2vec_small.pt``, ``hubert_base_ls960.pt``) pickle an
``argparse.Namespace`` or an omegaconf ``DictConfig`` next to the weights, and
sometimes numpy scalars or fairseq's own classes in their training state.
Plain ``torch.load`` would import and call whatever the pickle names: running
code from a downloaded file. ``torch.load(weights_only=True)`` refuses those
objects outright.

What we do instead:

1. list every global (class or function) the pickle names, by disassembling
   its opcodes with :mod:`pickletools` (nothing is executed or imported);
2. allow-list, under each of those names, an *inert stand-in*: a fresh class
   that only records the arguments and state the pickle hands it;
3. load with torch's own weights-only unpickler (``weights_only=True``), so
   tensors, storages and containers are rebuilt by torch's restricted code and
   every foreign object becomes a stand-in;
4. :func:`plain` turns stand-ins back into data (a Namespace into a dict, an
   omegaconf tree into nested dicts and lists, an enum into its value).

torch's default allow-list is consulted before ours, so tensors, ``OrderedDict``
and dtypes keep their real types; modules torch blocks (``os``, ``sys``...)
stay blocked, and the load then fails with a clear error.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from mtlser.utils import MtlserError


class Opaque:
    """Base of the inert stand-ins: records what the pickle passes, calls nothing.

    ``_args``: the arguments of the pickle's NEWOBJ/REDUCE (e.g. an enum's value);
    ``_state``: what BUILD would have given ``__setstate__`` (usually the ``__dict__``).
    """

    _pickle_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<inert {self._pickle_name}>"


def _stand_in(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")
    return type(name or full_name, (Opaque,), {"_pickle_name": full_name, "__module__": f"mtlser.inert.{module}"})


def _name_variants(module: str, name: str) -> set[str]:
    """The names a GLOBAL may be looked up under: as written, and translated from Python 2 names (protocol 2
    pickles write ``__builtin__.dict``) by the stdlib's table and by torch's own, smaller one."""
    out = {f"{module}.{name}"}
    tables = [(_compat_pickle.NAME_MAPPING, _compat_pickle.IMPORT_MAPPING)]
    try:
        from torch._utils import IMPORT_MAPPING as torch_imports, NAME_MAPPING as torch_names

        tables.append((torch_names, torch_imports))
    except ImportError:  # the stdlib table alone
        pass
    for names, imports in tables:
        if (module, name) in names:
            out.add(".".join(names[(module, name)]))
        elif module in imports:
            out.add(f"{imports[module]}.{name}")
    return out


def _globals_in_pickle(stream: io.BufferedIOBase | io.BytesIO, count: int) -> set[str]:
    """Names of the GLOBAL opcodes in the next ``count`` pickles of ``stream`` (static disassembly)."""
    found: set[str] = set()
    for _ in range(count):
        for opcode, arg, _pos in pickletools.genops(stream):
            if opcode.name == "GLOBAL":
                module, name = str(arg).split(" ", 1)
                found |= _name_variants(module, name)
    return found


def pickle_globals(path: Path) -> set[str]:
    """Every class/function name a torch checkpoint's pickle refers to.

    Zip format (torch >= 1.6): the pickle is ``<dir>/data.pkl``. Legacy format:
    a magic number, the protocol, sys info, then the object, as four pickles.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not names:
                raise MtlserError(f"{path}: a zip file without data.pkl; not a torch checkpoint")
            return _globals_in_pickle(io.BytesIO(zf.read(names[0])), 1)
    with open(path, "rb") as f:
        return _globals_in_pickle(f, 4)


def safe_torch_load(path: Path) -> Any:
    """``torch.load`` of an untrusted file: tensors real, every foreign object an inert :class:`Opaque`."""
    path = Path(path)
    if not path.is_file():
        raise MtlserError(f"{path}: file not found")
    try:
        names = pickle_globals(path)
    except MtlserError:
        raise
    except Exception as e:  # truncated file, not a pickle at all
        raise MtlserError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    # Torch's own tensor machinery is left to torch's allow-list; anything else gets a stand-in.
    foreign = sorted(n for n in names if n != "torch" and not n.startswith("torch.") and n != "collections.OrderedDict")
    stand_ins = [(_stand_in(n), n) for n in foreign]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise MtlserError(
            f"{path}: cannot be read safely ({_reason(e)}). mtlser loads checkpoints with torch's weights-only "
            "unpickler and never runs code from them; re-save the weights as a plain state dict or safetensors."
        ) from None


def _reason(e: Exception) -> str:
    """The line of torch's long weights-only error that says what was refused (not its advice to drop
    weights_only, which would run the file's code)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    key = [ln for ln in lines if re.search(r"GLOBAL|Can only|Unsupported operand|persistent", ln)]
    return f"{type(e).__name__}: {(key or lines or [''])[-1]}"


def plain(obj: Any, _seen: set[int] | None = None) -> Any:
    """Stand-ins and containers -> plain data (dict/list/str/number/None), for reading configs.

    - ``argparse.Namespace`` and other plain objects: their attribute dict;
    - omegaconf ``DictConfig``/``ListConfig``: their ``_content``; value nodes: their ``_val``;
    - enums (rebuilt as ``Cls(value)``): the value;
    - a stand-in *class* (e.g. ``typing.Any`` used as a value): its name.
    Tensors are returned as they are. Cycles (omegaconf's ``_parent`` links) are never followed.
    """
    seen = _seen if _seen is not None else set()
    if isinstance(obj, (str, int, float, bool, type(None), torch.Tensor)):
        return obj
    if isinstance(obj, type):
        return getattr(obj, "_pickle_name", obj.__name__)
    if id(obj) in seen:
        return None
    seen = seen | {id(obj)}
    if isinstance(obj, dict):
        return {plain(k, seen): plain(v, seen) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, seen) for v in obj]
    if isinstance(obj, Opaque):
        state = obj._state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], (dict, type(None))):
            state = state[0]  # (dict, slots) form
        if isinstance(state, dict):
            if "_content" in state:  # omegaconf container
                return plain(state["_content"], seen)
            if "_val" in state:  # omegaconf value node
                return plain(state["_val"], seen)
            return {k: plain(v, seen) for k, v in state.items() if not str(k).startswith("_parent")}
        if state is None and len(obj._args) == 1:  # Enum(value) and similar one-argument rebuilds
            return plain(obj._args[0], seen)
        return repr(obj)
    return repr(obj)
