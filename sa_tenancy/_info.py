"""``session.info`` that refuses a tenant change at the moment it would leak (private).

The tenant is a key of ``session.info``, a plain dict that application code writes. A change of
tenant is only safe while the session holds nothing of the old tenant: no open transaction that
applied it, no objects in its identity map loaded for it, no pending objects added for it.
Checked only at the next transaction begin, a change comes too late: ``session.get()`` answers
from the identity map with no SQL and no event, so after
``session.info["schema"] = "globex"`` it would hand out acme's cached object inside a globex
session.

So an installation gives its session class an ``info`` property whose dictionary checks every
write that changes the tenant key (``info[key] = ...``, ``del``, ``pop``, ``popitem``,
``clear``, ``update``, ``setdefault``, ``|=``) and every replacement of the whole dictionary
(``session.info = {...}``), and raises :class:`~sa_tenancy.SchemaSwitchError` *before*
anything changes. Reads are plain dict reads. The library's own bookkeeping is not in
``session.info`` at all, so clearing it cannot switch a guard off.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

__all__ = ["TenantInfo", "info_property"]

#: ``check(session, info, new_value)``: raise if the session's tenant may not become
#: ``new_value`` (``info``: the session's current ``info`` dict, or None).
Check = Callable[[Session, "Mapping[Any, Any] | None", object], None]
_MISSING = object()


class TenantInfo(dict[Any, Any]):
    """The ``info`` dictionary of a tenant session: writes to the tenant key are checked first."""

    __slots__ = ("_check", "_key", "_session")

    def __init__(self, data: Mapping[Any, Any], session: Session, key: str, check: Check) -> None:
        super().__init__(data)
        self._session = weakref.ref(session)
        self._key = key
        self._check = check

    def _changing(self, value: object) -> None:
        session = self._session()
        if session is not None:
            self._check(session, self, None if value is _MISSING else value)

    def __setitem__(self, key: Any, value: Any) -> None:
        if key == self._key:
            self._changing(value)
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        if key == self._key and key in self:
            self._changing(_MISSING)
        super().__delitem__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        if key == self._key and key in self:
            self._changing(_MISSING)
        return super().pop(key, *default)

    def popitem(self) -> tuple[Any, Any]:
        if self and next(reversed(self)) == self._key:
            self._changing(_MISSING)
        return super().popitem()

    def clear(self) -> None:
        if self._key in self:
            self._changing(_MISSING)
        super().clear()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key == self._key and key not in self:
            self._changing(default)
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        new = dict(*args, **kwargs)
        if self._key in new:
            self._changing(new[self._key])
        super().update(new)

    def __ior__(self, other: Iterable[Any]) -> TenantInfo:  # type: ignore[override,misc]
        self.update(other)
        return self


def info_property(key: str, check: Check) -> property:
    """The ``info`` property an installation puts on its session class."""

    def get(session: Session) -> TenantInfo:
        found = session.__dict__.get("info")
        if type(found) is not TenantInfo or found._check is not check:
            # First use, or a session made before install(): wrap what it had.
            found = TenantInfo(found or {}, session, key, check)
            session.__dict__["info"] = found
        return found

    def set_(session: Session, value: Mapping[Any, Any]) -> None:
        replacement = dict(value)
        check(session, session.__dict__.get("info"), replacement.get(key))
        session.__dict__["info"] = TenantInfo(replacement, session, key, check)

    def delete(session: Session) -> None:
        set_(session, {})

    return property(get, set_, delete, doc="Session-local data; the tenant key is guarded.")
