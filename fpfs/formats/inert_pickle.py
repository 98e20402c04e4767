"""Parse a pickle into inert structure, never executing it.

pickle.load runs whatever callables the pickle names (os.system, builtins.exec, ...), so
the torch format never uses it. This is a tiny stack machine over the opcodes
(pickletools.genops decodes them) that only builds data: dicts, lists, tuples, strings,
numbers, None/bools, memo references and MARKs. A GLOBAL is recorded as an opaque Global
symbol and is never imported; REDUCE/NEWOBJ/BUILD record a Call node that is never called;
a persistent id becomes a Persistent node. Anything else (extensions, out-of-band buffers)
raises FormatError: the caller then stores the file as plain bytes, which is lossless.
"""
from __future__ import annotations

import pickletools
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .layout import FormatError, parser_warnings_ignored


@dataclass(frozen=True)
class Global:
    """A GLOBAL/STACK_GLOBAL reference, by name only: nothing is imported."""
    module: str
    name: str


class PDict:
    """A pickled dict as ordered (key, value) pairs: keys may be unhashable inert nodes, and
    a hostile pickle must not be able to make us hash anything."""
    __slots__ = ("items",)

    def __init__(self, items: Optional[List[Tuple[Any, Any]]] = None):
        self.items: List[Tuple[Any, Any]] = items if items is not None else []


@dataclass(eq=False)
class Call:
    """func(*args) as the pickle describes it (REDUCE, NEWOBJ, INST, OBJ), not performed.
    Later SETITEM(S)/APPEND(S)/BUILD on the result are recorded on the node (an OrderedDict
    state dict is `OrderedDict()` followed by SETITEMS)."""
    func: Any
    args: Any
    kwargs: Any = None
    items: List[Tuple[Any, Any]] = field(default_factory=list)
    appends: List[Any] = field(default_factory=list)
    states: List[Any] = field(default_factory=list)


@dataclass(eq=False)
class Persistent:
    """A persistent id (BINPERSID/PERSID): torch.save's reference to a storage."""
    pid: Any


def _ops(data: bytes) -> Iterator[Tuple[str, Any]]:
    """(opcode name, argument) pairs; genops' errors on malformed input (ValueError,
    UnicodeDecodeError, struct.error, ...) are not a documented set, so all of them mean
    "malformed pickle"."""
    it = pickletools.genops(data)
    with parser_warnings_ignored():     # genops decodes STRING with codecs.escape_decode
        while True:
            try:
                op, arg, _pos = next(it)
            except StopIteration:
                return
            except Exception as exc:        # noqa: BLE001
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise FormatError(f"malformed pickle ({msg[:200]})") from None
            yield op.name, arg


_SCALARS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT",
            "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES",
            "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE", "BINUNICODE",
            "SHORT_BINUNICODE", "BINUNICODE8"}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def parse(data: bytes) -> Any:
    """The root object of the pickle in data, as inert nodes."""
    stack: List[Any] = []
    metastack: List[List[Any]] = []
    memo: Dict[Any, Any] = {}

    def pop() -> Any:
        if not stack:
            raise FormatError("malformed pickle (stack underflow)")
        return stack.pop()

    def top() -> Any:
        if not stack:
            raise FormatError("malformed pickle (stack underflow)")
        return stack[-1]

    def pop_mark() -> List[Any]:
        nonlocal stack
        if not metastack:
            raise FormatError("malformed pickle (no MARK)")
        items = stack
        stack = metastack.pop()
        return items

    def pairs(items: List[Any]) -> List[Tuple[Any, Any]]:
        if len(items) % 2:
            raise FormatError("malformed pickle (odd number of dict items)")
        return list(zip(items[0::2], items[1::2]))

    for name, arg in _ops(data):
        if name in _SCALARS:
            stack.append(arg)
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name in ("PROTO", "FRAME"):
            continue
        elif name == "STOP":
            return pop()
        elif name == "MARK":
            metastack.append(stack)
            stack = []
        elif name == "POP":
            if stack:
                stack.pop()
            else:
                pop_mark()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(top())
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise FormatError(f"malformed pickle (memo {arg!r} is unset)")
            stack.append(memo[arg])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = top()
        elif name == "MEMOIZE":
            memo[len(memo)] = top()
        elif name == "EMPTY_DICT":
            stack.append(PDict())
        elif name == "DICT":
            items = pop_mark()      # first: pop_mark rebinds stack
            stack.append(PDict(pairs(items)))
        elif name in ("EMPTY_LIST", "EMPTY_SET"):
            stack.append([])
        elif name == "LIST":
            items = pop_mark()
            stack.append(items)
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE", "FROZENSET"):
            items = pop_mark()
            stack.append(tuple(items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [pop() for _ in range(n)]
            stack.append(tuple(reversed(items)))
        elif name in ("APPEND", "APPENDS", "ADDITEMS"):
            items = [pop()] if name == "APPEND" else pop_mark()
            target = top()
            if isinstance(target, list):
                target.extend(items)
            elif isinstance(target, Call) and name != "ADDITEMS":
                target.appends.extend(items)
            else:
                raise FormatError(f"malformed pickle ({name} to a non-list)")
        elif name in ("SETITEM", "SETITEMS"):
            if name == "SETITEM":
                value = pop()
                new = [(pop(), value)]
            else:
                new = pairs(pop_mark())
            target = top()
            if isinstance(target, PDict):
                target.items.extend(new)
            elif isinstance(target, Call):
                target.items.extend(new)
            else:
                raise FormatError(f"malformed pickle ({name} to a non-dict)")
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            stack.append(Global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = pop(), pop()
            if not (isinstance(module, str) and isinstance(attr, str)):
                raise FormatError("malformed pickle (STACK_GLOBAL of non-strings)")
            stack.append(Global(module, attr))
        elif name in ("REDUCE", "NEWOBJ"):
            args = pop()
            stack.append(Call(pop(), args))
        elif name == "NEWOBJ_EX":
            kwargs, args = pop(), pop()
            stack.append(Call(pop(), args, kwargs))
        elif name == "INST":
            module, _, attr = str(arg).partition(" ")
            items = pop_mark()
            stack.append(Call(Global(module, attr), tuple(items)))
        elif name == "OBJ":
            items = pop_mark()
            if not items:
                raise FormatError("malformed pickle (OBJ without a class)")
            stack.append(Call(items[0], tuple(items[1:])))
        elif name == "BUILD":
            state = pop()
            target = top()
            if not isinstance(target, Call):
                raise FormatError("malformed pickle (BUILD of a non-object)")
            target.states.append(state)
        elif name == "BINPERSID":
            stack.append(Persistent(pop()))
        elif name == "PERSID":
            stack.append(Persistent(arg))
        else:   # EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER: nothing torch.save writes
            raise FormatError(f"pickle opcode {name} is not supported")
    raise FormatError("malformed pickle (no STOP)")
