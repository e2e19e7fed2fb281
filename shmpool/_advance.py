"""Progress from inside a kernel: :func:`advance`, and the tally each map's runner reports to.

A map's bar counts indices along the split axis. Each runner of a map with a bar (a worker
process, or a pool thread) owns one counter: a word of the control block in shared memory
(SharedPool) or an entry of a list in the caller's process (ThreadPool). The runner sets
the counter to the end of each chunk it finishes, so a kernel that never calls
:func:`advance` still gives a correct bar; :func:`advance` moves it forward inside the
chunk, never past the chunk's end. The parent reads the counters on its bar tick: no
message is sent per call, and a call costs a thread-local lookup and one store.

Kept free of any backend so that workers, threads and the front end can all import it.
"""

from __future__ import annotations

import threading
from collections.abc import MutableSequence

__all__ = ["Tally", "advance", "current", "install"]


class Tally:
    """One runner's counter: ``words[index]`` holds the indices it has done in its map.

    ``limit`` is the end of the chunk it is running (the counter before the chunk plus the
    chunk's length), so reports inside a chunk never count more than the chunk has.
    """

    __slots__ = ("index", "limit", "words")

    def __init__(self, words: MutableSequence[int] | memoryview, index: int):
        self.words = words
        self.index = index
        self.limit = words[index]


class _Here(threading.local):
    # A class attribute is the default in every thread: reading it needs no getattr().
    tally: Tally | None = None


_here = _Here()


def install(tally: Tally | None) -> Tally | None:
    """Make ``tally`` the one :func:`advance` reports to in this thread; the one before.

    A runner installs its tally for a map and puts the previous one back after (a map run
    from inside a kernel, in the same thread, has its own).
    """
    previous = _here.tally
    _here.tally = tally
    return previous


def current() -> Tally | None:
    """The tally :func:`advance` reports to in this thread, or None."""
    return _here.tally


def advance(n: int = 1) -> None:
    """Report ``n`` more indices of the running chunk done, for the map's progress bar.

    Call it inside a kernel of ``map`` (``map_async``, a ``@kernel``) to make a bar move
    while a long chunk runs: ``n`` counts indices along the split axis (rows, for
    ``axis=0``). A finished chunk always counts its full length, whatever its kernel
    reported, and reports beyond the chunk's length are ignored. It sends no message (it
    writes a counter in shared memory, or in the process on a ThreadPool) and costs well
    under a microsecond.

    Outside a map's kernel (in plain code, in an ``imap`` or ``submit`` function, whose bar
    counts items as they arrive), when the map shows no bar, and on a DaskPool, it does
    nothing. A negative ``n`` raises ValueError wherever it is called.
    """
    if n < 0:
        raise ValueError(f"advance() takes a non-negative number of indices, got {n!r}")
    tally = _here.tally
    if tally is not None:  # inlined, not a method: this is most of what a call costs
        words, index = tally.words, tally.index
        value = words[index] + n
        words[index] = value if value < tally.limit else tally.limit
