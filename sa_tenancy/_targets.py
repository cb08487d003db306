"""Find the one ``Session`` class an installation may listen on (private).

Session events are class-level: a listener on :class:`~sqlalchemy.orm.Session` itself would run
for every session in the process. Each supported target therefore resolves to a class that only
its own sessions use:

* a ``sessionmaker`` already owns a private subclass (``sessionmaker.class_``);
* a ``scoped_session`` / ``async_scoped_session`` delegates to its factory;
* an ``async_sessionmaker`` builds sync sessions from ``sync_session_class``, which defaults to
  the *global* ``Session``; a private subclass is made and configured on it;
* an ``AsyncSession`` subclass gets a private ``sync_session_class`` the same way;
* a ``Session`` subclass is used as is (the user owns it).

``sqlalchemy.ext.asyncio`` is never imported here: SQLAlchemy 2.1 imports it only with
``greenlet`` installed, and if it has not been imported, no target can be an async one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

from .exc import TenancyError

INSTALLATION_ATTR = "_sa_tenancy_installation"

Restore = Callable[[], None]


def _private_subclass(base: type[Session]) -> type[Session]:
    return type(base.__name__, (base,), {"__module__": base.__module__})


def _installed_on(cls: type[Session]) -> Any:
    for klass in cls.__mro__:
        found = klass.__dict__.get(INSTALLATION_ATTR)
        if found is not None:
            return found
    return None


def resolve(target: object) -> tuple[type[Session], Restore]:
    """Return the session class to listen on for ``target`` and a function undoing any change.

    :raises TenancyError: for an unsupported target, the global ``Session``, or a target that
        (through a base class) already has an installation.
    """
    if isinstance(target, scoped_session):
        return resolve(target.session_factory)
    if isinstance(target, sessionmaker):
        return _checked(target.class_), _nothing
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_ext is not None:
        if isinstance(target, asyncio_ext.async_scoped_session):
            return resolve(target.session_factory)
        if isinstance(target, asyncio_ext.async_sessionmaker):
            return _async_factory(target, asyncio_ext.AsyncSession)
        if isinstance(target, type) and issubclass(target, asyncio_ext.AsyncSession):
            return _async_class(target, asyncio_ext.AsyncSession)
    if isinstance(target, type) and issubclass(target, Session):
        if target is Session:
            raise TenancyError(
                "refusing to install on sqlalchemy.orm.Session itself: that would apply to every "
                "session in the process. Install on your sessionmaker (or a Session subclass)."
            )
        return _checked(target), _nothing
    raise TenancyError(
        f"cannot install on {target!r}: pass a sessionmaker, async_sessionmaker, "
        "scoped_session, async_scoped_session, or a Session / AsyncSession subclass"
    )


def _nothing() -> None:
    return None


def _checked(cls: type[Session]) -> type[Session]:
    existing = _installed_on(cls)
    if existing is not None:
        raise TenancyError(
            f"sa_tenancy is already installed here ({existing!r}); installing twice would "
            "apply the tenant twice. Call sa_tenancy.uninstall() on that target first, or keep "
            "using the existing installation."
        )
    return cls


def _async_factory(target: Any, async_session_base: type) -> tuple[type[Session], Restore]:
    kw = target.kw
    had_key = "sync_session_class" in kw
    current = kw.get("sync_session_class")
    if current is None:
        current = target.class_.sync_session_class
    if _installed_on(current) is not None:
        _checked(current)
    private = _private_subclass(current)
    target.configure(sync_session_class=private)

    def restore() -> None:
        if had_key:
            kw["sync_session_class"] = current
        else:
            kw.pop("sync_session_class", None)

    return private, restore


def _async_class(target: type, async_session_base: type) -> tuple[type[Session], Restore]:
    if target is async_session_base:
        raise TenancyError(
            "refusing to install on AsyncSession itself: that would apply to every async "
            "session in the process. Install on your async_sessionmaker."
        )
    had_own = "sync_session_class" in target.__dict__
    current: type[Session] = target.sync_session_class  # type: ignore[attr-defined]
    if _installed_on(current) is not None:
        _checked(current)
    private = _private_subclass(current)
    target.sync_session_class = private  # type: ignore[attr-defined]

    def restore() -> None:
        if had_own:
            target.sync_session_class = current  # type: ignore[attr-defined]
        else:
            del target.sync_session_class  # type: ignore[attr-defined]

    return private, restore


def installed_class(target: object) -> type[Session] | None:
    """The session class an installation on ``target`` would listen on, changing nothing."""
    if isinstance(target, scoped_session):
        return installed_class(target.session_factory)
    if isinstance(target, sessionmaker):
        return target.class_
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_ext is not None:
        if isinstance(target, asyncio_ext.async_scoped_session):
            return installed_class(target.session_factory)
        if isinstance(target, asyncio_ext.async_sessionmaker):
            cls = target.kw.get("sync_session_class")
            return cls if isinstance(cls, type) else None
        if isinstance(target, type) and issubclass(target, asyncio_ext.AsyncSession):
            found: type[Session] = target.sync_session_class  # type: ignore[attr-defined]
            return found
    if isinstance(target, type) and issubclass(target, Session):
        return target
    return None
