"""A pickle reader for untrusted files: it builds plain data and only what the caller's constructors make.

Why not `torch._weights_only_unpickler` (what `torch.load(weights_only=True)` runs, extended with
`torch.serialization.add_safe_globals`)? Read in the installed torch, it falls short for NVIDIA and insightface
pickles: it knows protocol 2 opcodes only (these files use FRAME, BINBYTES, SHORT_BINUNICODE, MEMOIZE,
STACK_GLOBAL...); its allow-list is process-wide state, so allowing NumPy or EasyDict for one file would allow
them for every later `torch.load`; it calls allowed functions on the file's arguments as they come (NumPy's
`scalar`/`_reconstruct` then read forged dtypes: the SIGSEGV of issue 17) and reads every declared length
before checking it against the file. It is still what reads every `torch.load` checkpoint in the project.

This reader is the pure-Python `pickle._Unpickler` with its dispatch table rebuilt:
- GLOBAL/STACK_GLOBAL never import: an allowed name becomes an inert `Global` token, anything else is refused
  naming it. A token is only ever *called* by REDUCE or NEWOBJ, through the caller's own constructor for that
  name (`calls` / `classes`); nothing in the loaded data is the real function or class, so BUILD can never
  `setattr` on a global (the `__defaults__` poisoning of issue 17).
- BUILD applies only to dicts the pickle made from an allowed class (state: a dict of str keys, stored in the
  instance `__dict__` as pickle does) or to objects a constructor returned as `Pending` (NumPy placeholders),
  once. INST, OBJ, persistent ids, extension codes and out-of-band buffers are refused; APPEND(S)/SETITEM(S)/
  ADDITEMS act only on real lists/dicts/sets, never calling a method of another object.
- Every length field is checked against the bytes left in the file before anything is read or allocated;
  at most `MAX_OPCODES` opcodes and `MAX_DEPTH` nested MARKs or tuples (hashing a deep tuple recurses in C);
  after STOP, an iterative walk refuses structures that contain themselves or nest deeper than `MAX_DEPTH`.
Refusals raise `Refused`; `read_pickle` turns any failure into the caller's one-line `ExFaceGANError`.
"""

from __future__ import annotations

import _compat_pickle
import itertools
import os
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from exfacegan.errors import ExFaceGANError

MAX_DEPTH = 100
MAX_OPCODES = 4_000_000  # an opcode creates at most one object: this bounds memory to about 1 GiB past the data
# What a hostile byte stream can raise inside the pure-Python unpickler; anything else is a bug and keeps its traceback.
CORRUPT = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, struct.error,
           OverflowError, RecursionError)


class Refused(pickle.UnpicklingError):
    """The pickle asks for a construct this reader does not allow (the message names it)."""


@dataclass(frozen=True)
class Global:
    """An allowed global as the pickle names it: inert data, called only through the reader's constructors."""

    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Pending:
    """What a constructor returns for an object that takes BUILD state: `value` goes on the stack, and the
    first BUILD on it calls `build(value, state)`; any other BUILD on it is refused."""

    value: Any
    build: Callable[[Any, Any], None]


def shown(text: Any, limit: int = 80) -> str:
    """Attacker text for a one-line message: clipped, newlines and non-printables escaped."""
    return repr(str(text)[:limit])[1:-1]


def with_article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def one_line(error: BaseException) -> str:
    """The first line of an error's message, clipped, non-printables escaped."""
    lines = str(error).splitlines()
    line = lines[0][:300] if lines else type(error).__name__
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in line)


class _BoundedFile:
    """`read`/`readline` over a binary file that refuse any length beyond the bytes left in it."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.size = handle, size

    def read(self, count: int) -> bytes:
        left = self.size - self.handle.tell()
        if count > left:
            raise pickle.UnpicklingError(f"a length field asks for {count:,} bytes where the file has {max(left, 0):,} left")
        return self.handle.read(count)

    def readline(self) -> bytes:
        return self.handle.readline()


class _Dispatch(dict):
    def __missing__(self, opcode: int) -> Callable[[Any], None]:
        def refuse(unpickler: Any) -> None:
            raise Refused(f"opcode {opcode:#04x} is not allowed")
        return refuse


def _refuse(what: str) -> Callable[[Any], None]:
    def refuse(unpickler: Any) -> None:
        raise Refused(f"the pickle uses {what}, which {with_article(unpickler.kind)} does not")
    return refuse


def _kind_of(value: Any) -> str:
    return f"the global '{value}'" if isinstance(value, Global) else f"a {type(value).__name__}"


@dataclass(frozen=True)
class Allowed:
    """What a file kind may hold: `calls[(module, name)]` builds REDUCE results from the pickle's arguments;
    `classes[(module, name)]` are dict classes NEWOBJ may make empty (filled by SETITEMS, BUILD-able)."""

    calls: Mapping[tuple[str, str], Callable[..., Any]]
    classes: Mapping[tuple[str, str], type]
    kind: str
    holds: str
    names: frozenset[tuple[str, str]] = frozenset()  # allowed only as arguments, never called


class SafeUnpickler(pickle._Unpickler):
    """`pickle._Unpickler` with every opcode that reaches code replaced by checked versions (module docstring)."""

    dispatch = _Dispatch(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, size: int, allowed: Allowed, encoding: str = "ASCII",
                 persistent: Callable[[Any], Any] | None = None) -> None:
        super().__init__(_BoundedFile(file, size), encoding=encoding)
        self.allowed, self.kind = allowed, allowed.kind
        self.persistent = persistent
        self.tuple_depth: dict[int, tuple[tuple | frozenset, int]] = {}
        self.pending: dict[int, Pending] = {}  # by id of the value, which the entry keeps alive

    def load(self) -> Any:
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read, self.readinto, self.readline = self._unframer.read, self._unframer.readinto, self._unframer.readline
        self.metastack, self.stack = [], []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch = self.read, self.dispatch
        try:
            for _ in range(MAX_OPCODES):
                key = read(1)
                if not key:
                    raise EOFError("the pickle ends before its STOP opcode")
                dispatch[key[0]](self)
        except pickle._Stop as stop:
            check_structure(stop.value)
            return stop.value
        raise Refused(f"the pickle has more than {MAX_OPCODES:,} opcodes")

    def find_class(self, module: str, name: str) -> Global:
        if self.proto < 3:  # Python 2 names, as pickle maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key not in self.allowed.calls and key not in self.allowed.classes and key not in self.allowed.names:
            raise Refused(f"the pickle asks for the global '{shown(module)}.{shown(name)}', which {with_article(self.kind)} "
                          f"does not need (only {self.allowed.holds} are allowed)")
        return Global(module, name)

    def _call(self, function: Any, args: Any) -> Any:
        if not isinstance(function, Global) or not isinstance(args, tuple):
            raise Refused(f"REDUCE calls {_kind_of(function)} with {_kind_of(args)}; only allowed globals may be called")
        make = self.allowed.calls.get((function.module, function.name))
        if make is None:
            raise Refused(f"the pickle calls '{function}', which only names a type here")
        try:
            made = make(*args)
        except TypeError as error:
            raise Refused(f"'{function}' called with arguments it does not take: {one_line(error)}") from None
        if isinstance(made, Pending):
            self.pending[id(made.value)] = made
            return made.value
        return made

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _new(self, cls: Any, args: Any, kwargs: Any = None) -> None:
        make = self.allowed.classes.get((cls.module, cls.name)) if isinstance(cls, Global) else None
        if make is None or args != () or kwargs:
            raise Refused(f"NEWOBJ on {_kind_of(cls)}: only an allowed dict class, with no arguments, may be created")
        self.append(make())

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self._new(self.stack.pop(), args)

    def load_newobj_ex(self) -> None:
        kwargs, args = self.stack.pop(), self.stack.pop()
        self._new(self.stack.pop(), args, kwargs)

    def load_build(self) -> None:
        state = self.stack.pop()
        instance = self.stack[-1]
        pending = self.pending.pop(id(instance), None)
        if pending is not None:
            pending.build(instance, state)
        elif type(instance) in self.allowed.classes.values() or type(instance) is OrderedDict:
            if not isinstance(state, dict) or not all(type(key) is str for key in state):
                raise Refused(f"BUILD state of a {type(instance).__name__} is {_kind_of(state)}, not a dict of names")
            instance.__dict__.update(state)
        else:
            raise Refused(f"BUILD on {_kind_of(instance)}: only dicts and arrays the pickle made take state")

    def _target(self, kind: type | tuple[type, ...], opcode: str) -> Any:
        target = self.stack[-1]
        if type(target) not in (kind if isinstance(kind, tuple) else (kind,)):
            raise Refused(f"{opcode} on {_kind_of(target)}")
        return target

    def load_append(self) -> None:
        item = self.stack.pop()
        self._target(list, "APPEND").append(item)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target(list, "APPENDS").extend(items)

    def _dicts(self) -> tuple[type, ...]:
        return (dict, OrderedDict, *self.allowed.classes.values())

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._target(self._dicts(), "SETITEM")[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target(self._dicts(), "SETITEMS")
        for index in range(0, len(items), 2):
            target[items[index]] = items[index + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target(set, "ADDITEMS").update(items)

    def load_mark(self) -> None:
        if len(self.metastack) >= MAX_DEPTH:
            raise Refused(f"MARKs nest deeper than {MAX_DEPTH}")
        super().load_mark()

    def _tuple(self, items: Iterable[Any], kind: type = tuple) -> tuple | frozenset:
        made = kind(items)
        depth = 1 + max((self.tuple_depth.get(id(item), (None, 1))[1] for item in made
                         if type(item) in (tuple, frozenset)), default=0)
        if depth > MAX_DEPTH:
            raise Refused(f"tuples nest deeper than {MAX_DEPTH}")
        if depth > 1:
            self.tuple_depth[id(made)] = (made, depth)  # keeps it alive so the id stays its own
        return made

    def load_tuple(self) -> None:
        made = self._tuple(self.pop_mark())
        self.append(made)

    def load_tuple1(self) -> None:
        self.stack[-1] = self._tuple(self.stack[-1:])

    def load_tuple2(self) -> None:
        self.stack[-2:] = [self._tuple(self.stack[-2:])]

    def load_tuple3(self) -> None:
        self.stack[-3:] = [self._tuple(self.stack[-3:])]

    def load_frozenset(self) -> None:
        made = self._tuple(self.pop_mark(), frozenset)
        self.append(made)

    def load_bytearray8(self) -> None:
        (length,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(length)))  # pickle's own allocates `length` bytes before reading them

    def load_binpersid(self) -> None:
        if self.persistent is None:
            raise Refused(f"the pickle uses persistent ids, which {with_article(self.kind)} does not")
        self.append(self.persistent(self.stack.pop()))

    for _opcode, _method in [(pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj),
                             (pickle.NEWOBJ_EX, load_newobj_ex), (pickle.BUILD, load_build),
                             (pickle.APPEND, load_append), (pickle.APPENDS, load_appends),
                             (pickle.SETITEM, load_setitem), (pickle.SETITEMS, load_setitems),
                             (pickle.ADDITEMS, load_additems), (pickle.MARK, load_mark),
                             (pickle.TUPLE, load_tuple), (pickle.TUPLE1, load_tuple1), (pickle.TUPLE2, load_tuple2),
                             (pickle.TUPLE3, load_tuple3), (pickle.FROZENSET, load_frozenset),
                             (pickle.BYTEARRAY8, load_bytearray8), (pickle.BINPERSID, load_binpersid)]:
        dispatch[_opcode[0]] = _method
    for _opcode, _what in [(pickle.PERSID, "text persistent ids"), (pickle.INST, "INST (protocol 0 objects)"),
                           (pickle.OBJ, "OBJ (protocol 1 objects)"), (pickle.EXT1, "extension codes"),
                           (pickle.EXT2, "extension codes"), (pickle.EXT4, "extension codes"),
                           (pickle.NEXT_BUFFER, "out-of-band buffers"), (pickle.READONLY_BUFFER, "out-of-band buffers")]:
        dispatch[_opcode[0]] = _refuse(_what)
    del _opcode, _method, _what


def _children(value: Any) -> Iterable[Any] | None:
    """What a container holds (None for a leaf); instance attributes count, as BUILD may set them."""
    if type(value) in (list, tuple, set, frozenset):
        return value
    if isinstance(value, dict):
        return itertools.chain(value.keys(), value.values(), getattr(value, "__dict__", {}).values())
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic, Global, str, bytes, bytearray, int, float, complex)):
        return None
    attributes = getattr(value, "__dict__", None)
    return None if attributes is None else attributes.values()


def check_structure(root: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a structure that contains itself or nests deeper than `max_depth` (an iterative walk)."""
    top = _children(root)
    if top is None:
        return
    heights: dict[int, int] = {}
    path = [(root, iter(top), [0])]
    on_path = {id(root)}
    while path:
        node, children, height = path[-1]
        for child in children:
            below = _children(child)
            if below is None:
                continue
            if id(child) in on_path:
                raise Refused("the pickle holds a structure that contains itself")
            known = heights.get(id(child))
            if known is None:
                if len(path) >= max_depth:
                    raise Refused(f"the pickle nests containers deeper than {max_depth}")
                path.append((child, iter(below), [0]))
                on_path.add(id(child))
                break
            height[0] = max(height[0], known + 1)
            if len(path) + known >= max_depth:
                raise Refused(f"the pickle nests containers deeper than {max_depth}")
        else:
            path.pop()
            on_path.discard(id(node))
            heights[id(node)] = height[0]
            if path:
                path[-1][2][0] = max(path[-1][2][0], height[0] + 1)


def load_from(handle: BinaryIO, size: int, allowed: Allowed, encoding: str = "ASCII",
              persistent: Callable[[Any], Any] | None = None) -> Any:
    """One pickle from `handle`'s position (`size` bytes in all), leaving `handle` just after its STOP."""
    return SafeUnpickler(handle, size, allowed, encoding, persistent).load()


def read_pickle(path: str | Path, allowed: Allowed, error: type[ExFaceGANError], encoding: str = "ASCII") -> Any:
    """Unpickle a file with `allowed`; any refusal or corruption becomes `error`, one line naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            return SafeUnpickler(handle, size, allowed, encoding).load()
    except ExFaceGANError as failure:
        raise error(f"{path}: {failure}") from None
    except Refused as refusal:
        raise error(f"{path}: refused to load: {one_line(refusal)}") from None
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except (*CORRUPT, OSError) as failure:
        raise error(f"{path} is not a readable {allowed.kind} (truncated or corrupt?): {one_line(failure)}") from failure


def text_of(value: Any, what: str) -> str:
    """A name the pickle gives as str (Python 3) or bytes (Python 2 read with encoding='bytes')."""
    if isinstance(value, bytes):
        return value.decode("latin1")
    if not isinstance(value, str):
        raise Refused(f"{what} is {_kind_of(value)}, not text")
    return value


def ordered_dict(items: Any = ()) -> OrderedDict:
    """`collections.OrderedDict()` as pickled (empty, filled by SETITEMS), or from a list of pairs (Python 2)."""
    if type(items) not in (list, tuple) or not all(type(pair) in (list, tuple) and len(pair) == 2 for pair in items):
        raise Refused(f"OrderedDict built from {_kind_of(items)}, not from a list of pairs")
    try:
        return OrderedDict(items)
    except TypeError as error:
        raise Refused(f"OrderedDict with a key it cannot hold: {one_line(error)}") from None


def plain_set(items: Any = ()) -> set:
    """`builtins.set(list)` as protocols 2 and 3 pickle a set."""
    if type(items) not in (list, tuple):
        raise Refused(f"set built from {_kind_of(items)}, not from a list")
    try:
        return set(items)
    except TypeError as error:
        raise Refused(f"set of items that cannot be in a set: {one_line(error)}") from None


def latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode(str, 'latin1')`, as Python 3 pickles bytes with protocol 2, and nothing else."""
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding != "latin1":
        raise Refused("the pickle calls _codecs.encode other than to rebuild bytes from latin-1 text")
    return text.encode("latin1")
