"""What a kernel pickled by value captures, as a key that changes whenever its pickle would.

cloudpickle pickles a lambda, a closure or a function defined in ``__main__`` (a script, a
notebook cell) by value: its code, defaults, closure cells, attributes and the globals its
code names. Doing that once per map costs tens of microseconds, a large part of a small
map's overhead. :func:`capture_key` lets the caller keep the bytes and reuse them as long
as nothing captured has changed: the key holds everything cloudpickle reads, compared by
value for immutable data and by identity for what pickles by reference (modules,
importable functions and classes, builtins, ufuncs), each held by the key so that its id
cannot be reused while the key lives. Anything else (a list, a dict, an
array, an instance, a class of ``__main__``) makes the function uncacheable, since it could
change in place without changing identity: such a kernel is pickled at every map, as before.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np

__all__ = ["capture_key"]

_IMMUTABLE = frozenset({int, float, bool, complex, str, bytes, type(None), range, type(Ellipsis)})
_BY_IDENTITY = (types.BuiltinFunctionType, np.ufunc)
_MAX_DEPTH = 4  # nested functions and containers; deeper structures are not cached
_ABSENT = object()  # a name the code uses that is not (yet) a global
# cloudpickle's own test for "pickles by reference"; without it nothing is cached.
_by_reference: Callable[[object], bool] | None = getattr(
    cloudpickle.cloudpickle, "_should_pickle_by_reference", None
)
_names_of_code: weakref.WeakKeyDictionary[types.CodeType, tuple[str, ...]] = weakref.WeakKeyDictionary()


class _Uncacheable(Exception):
    pass


class _Same:
    """Holds an object in a key and compares by identity (so an id cannot be reused while
    the key lives, and a code object equal to another but for its file name differs)."""

    __slots__ = ("obj",)

    def __init__(self, obj: object):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def capture_key(fn: object) -> tuple[Any, ...] | None:
    """A key equal between two calls exactly when cloudpickle would pickle ``fn`` (a
    function pickled by value) the same way; None when that cannot be told cheaply."""
    if _by_reference is None or not isinstance(fn, types.FunctionType):
        return None
    try:
        return _function_key(fn, 0, [])
    except _Uncacheable:
        return None


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The names that ``code`` and the code nested in it look up (globals among them)."""
    names = _names_of_code.get(code)
    if names is None:
        found: dict[str, None] = {}
        stack = [code]
        while stack:
            current = stack.pop()
            found.update(dict.fromkeys(current.co_names))
            stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
        names = _names_of_code[code] = tuple(found)
    return names


def _function_key(fn: types.FunctionType, depth: int, seen: list[int]) -> tuple[Any, ...]:
    if id(fn) in seen:
        # Recursion, or a function named twice: which of those already keyed it is.
        # (By position, not by object: the key must not hold the function it is for.)
        return ("again", seen.index(id(fn)))
    if depth > _MAX_DEPTH or fn.__dict__:
        raise _Uncacheable
    seen.append(id(fn))
    glob = fn.__globals__  # read-only, and alive as long as the function
    cells = tuple(_value_key(_cell(c), depth, seen) for c in fn.__closure__ or ())
    return (
        _Same(fn.__code__),
        fn.__name__,
        fn.__qualname__,
        fn.__module__,
        fn.__doc__,
        _value_key(fn.__defaults__, depth, seen),
        _value_key(tuple(sorted((fn.__kwdefaults__ or {}).items())), depth, seen),
        _value_key(tuple(fn.__annotations__.items()), depth, seen),
        cells,
        tuple(_value_key(glob.get(name, _ABSENT), depth, seen) for name in _global_names(fn.__code__)),
    )


def _cell(cell: types.CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # a cell not filled yet
        return _ABSENT


def _value_key(value: object, depth: int, seen: list[int]) -> object:
    kind = type(value)
    if kind in _IMMUTABLE:
        return (kind, value)
    if value is _ABSENT:
        return "absent"
    if kind is tuple or kind is frozenset:
        if depth > _MAX_DEPTH:
            raise _Uncacheable
        return (kind, tuple(_value_key(v, depth + 1, seen) for v in value))  # type: ignore[attr-defined]
    if isinstance(value, _BY_IDENTITY):
        return _Same(value)
    if isinstance(value, (types.ModuleType, type, types.FunctionType)):
        assert _by_reference is not None
        if _by_reference(value):
            return _Same(value)
        if isinstance(value, types.FunctionType):
            return _function_key(value, depth + 1, seen)
    raise _Uncacheable
