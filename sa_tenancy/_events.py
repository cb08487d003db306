"""sa_tenancy's own listeners on pools and dialects, registered exactly once (private).

sa_tenancy registers some listeners lazily, on the first object that needs them: the SQLite
checkin cleanup and the tenant limit on a pool, the statement guard on a dialect, the reset
watch on a ``StaticPool``. Whether an object already has such a listener is read from **the
object's own dispatch collection**, never from :func:`sqlalchemy.event.contains`.

``event.contains`` looks the listener up in SQLAlchemy's event registry, which is keyed by
``id(target)``. An entry whose target has been collected can outlive it (its listener
collection is still referenced, or was collected as cyclic garbage, which skips the weakref
callback that would remove the entry); a new object later given the same address is then
reported as listening when it is not. A guard that trusted it would skip registration: a new
engine's pool would keep a tenant's SQLite file attached after checkin, a new engine would run
raw SQL unguarded. In a process that creates and drops engines (tests, tenants of a job
runner) that happens, rarely and at random. The dispatch collection belongs to the object
itself, so the answer is exact.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc

__all__ = ["listen_once", "listens", "remove"]

_lock = threading.Lock()


def listens(owner: Any, identifier: str, fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is among the listeners of ``owner``'s own ``identifier`` event.

    ``owner`` is the object that holds the dispatch: a pool for pool events, a dialect (not
    an engine) for ``do_execute`` and the other dialect hooks, an engine for connection events.
    """
    return any(listener == fn for listener in getattr(owner.dispatch, identifier))


def listen_once(
    owner: Any, identifier: str, fn: Callable[..., Any], *, insert: bool = False
) -> None:
    """Register ``fn`` on ``owner`` unless ``owner`` already has it (thread-safe)."""
    with _lock:
        if not listens(owner, identifier, fn):
            event.listen(owner, identifier, fn, insert=insert)


def remove(target: Any, identifier: str, fn: Callable[..., Any]) -> None:
    """Remove ``fn`` from ``target``; nothing if it is not registered there (idempotent).

    For a class (a session class) there is no per-object collection to read; SQLAlchemy's own
    refusal to remove an unknown listener is what tells it is gone.
    """
    with _lock:
        if isinstance(target, type):
            with contextlib.suppress(sa_exc.InvalidRequestError):  # "No listeners found"
                event.remove(target, identifier, fn)
        elif listens(target, identifier, fn):
            event.remove(target, identifier, fn)
