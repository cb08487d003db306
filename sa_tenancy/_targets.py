"""Find the one ``Session`` class an installation may listen on (private).

Session events are class-level and reach every subclass: a listener on a class runs for every
session of that class and of every class derived from it, in the whole process. So an
installation never listens on a class that anybody else may use. Each factory target gets a
private subclass that only the installation creates and only that factory instantiates:

* a ``sessionmaker``: a private subclass of its ``class_`` replaces ``class_`` (restored by
  ``uninstall()``). ``sessionmaker`` already makes its own subclass of the ``class_`` it is
  given, but that class is an attribute anybody can read and reuse, and a sessionmaker only
  owns what it made: listening on a subclass made *at install time* is true whatever
  ``class_`` the factory was given. Sessions the factory made before ``install()`` keep the
  old class and stay plain: install at start-up, before the first session;
* a ``scoped_session`` / ``async_scoped_session`` delegates to its factory; when that factory is
  a class (``scoped_session(sqlmodel.Session)``), a private subclass of it replaces the factory
  in the registry, so sessions of that class made elsewhere stay plain;
* an ``async_sessionmaker`` builds sync sessions from ``sync_session_class``, which defaults to
  the *global* ``Session`` (or the ``AsyncSession`` class's own, e.g. SQLModel's); a private
  subclass is made and configured on the factory;
* a ``Session`` / ``AsyncSession`` subclass passed directly is listened on as is: its sessions
  are the ones made by calling it, so it must be a class the application owns. The classes that
  libraries hand to everybody (SQLAlchemy's, SQLModel's, Flask-SQLAlchemy's) are refused: an
  installation on ``sqlmodel.Session`` would apply to every SQLModel session in the process,
  those of other factories and of ``sqlmodel.ext.asyncio.session.AsyncSession`` included.

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

# Top-level packages whose Session classes are shared by every user of the library.
_LIBRARIES = ("sqlalchemy", "sqlmodel", "flask_sqlalchemy")

Restore = Callable[[], None]


def _private_subclass(base: type[Any]) -> type[Any]:
    return type(base.__name__, (base,), {"__module__": base.__module__})


def _installed_on(cls: type[Session]) -> Any:
    for klass in cls.__mro__:
        found = klass.__dict__.get(INSTALLATION_ATTR)
        if found is not None:
            return found
    return None


def resolve(target: object) -> tuple[type[Session], Restore]:
    """Return the session class to listen on for ``target`` and a function undoing any change.

    :raises TenancyError: for an unsupported target, a library's shared session class, or a
        target that (through a base class) already has an installation.
    """
    if isinstance(target, scoped_session):
        return _scoped(target)
    if isinstance(target, sessionmaker):
        return _sessionmaker(target)
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_ext is not None:
        if isinstance(target, asyncio_ext.async_scoped_session):
            return _scoped(target)
        if isinstance(target, asyncio_ext.async_sessionmaker):
            return _async_factory(target)
        if isinstance(target, type) and issubclass(target, asyncio_ext.AsyncSession):
            _refuse_shared(target, "async session", "async_sessionmaker(engine, class_={name})")
            return _async_class(target)
    if isinstance(target, type) and issubclass(target, Session):
        _refuse_shared(target, "session", "sessionmaker(engine, class_={name})")
        return _checked(target), _nothing
    raise TenancyError(
        f"cannot install on {target!r}: pass a sessionmaker, async_sessionmaker, "
        "scoped_session, async_scoped_session, or a Session / AsyncSession subclass"
    )


def _nothing() -> None:
    return None


def _refuse_shared(cls: type, kind: str, factory_hint: str) -> None:
    if cls.__module__.partition(".")[0] not in _LIBRARIES:
        return
    name = f"{cls.__module__}.{cls.__qualname__}"
    if cls.__module__.startswith("sqlalchemy.") and cls.__qualname__ in ("Session", "AsyncSession"):
        name = f"sqlalchemy.orm.{cls.__qualname__}"  # the public path (also of a factory's class)
    raise TenancyError(
        f"refusing to install on {name} itself: that would apply to every {kind} of that class "
        "(and of every class derived from it) in the process. Install on your factory instead, "
        f"e.g. {factory_hint.format(name=cls.__qualname__)}, or on a subclass of your own."
    )


def _checked(cls: type[Session]) -> type[Session]:
    existing = _installed_on(cls)
    if existing is not None:
        raise TenancyError(
            f"sa_tenancy is already installed here ({existing!r}); installing twice would "
            "apply the tenant twice. Call sa_tenancy.uninstall() on that target first, or keep "
            "using the existing installation."
        )
    return cls


def _sessionmaker(target: sessionmaker[Any]) -> tuple[type[Session], Restore]:
    current = _checked(target.class_)
    private: type[Session] = _private_subclass(current)
    target.class_ = private

    def restore() -> None:
        if target.class_ is private:
            target.class_ = current

    return private, restore


def _scoped(target: Any) -> tuple[type[Session], Restore]:
    factory = target.session_factory
    if not isinstance(factory, type):
        return resolve(factory)
    # The registry calls a class: put a private subclass in its place.
    private = _private_subclass(factory)
    session_class, restore_class = _owned_class(private)
    registry = target.registry
    target.session_factory = registry.createfunc = private

    def restore() -> None:
        restore_class()
        if target.session_factory is private:
            target.session_factory = registry.createfunc = factory

    return session_class, restore


def _owned_class(cls: type) -> tuple[type[Session], Restore]:
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_ext is not None and issubclass(cls, asyncio_ext.AsyncSession):
        return _async_class(cls)
    if issubclass(cls, Session):
        return _checked(cls), _nothing
    raise TenancyError(
        f"cannot install on a scoped session of {cls!r}: its factory must be a sessionmaker, "
        "an async_sessionmaker, or a Session / AsyncSession subclass"
    )


def _async_factory(target: Any) -> tuple[type[Session], Restore]:
    kw = target.kw
    had_key = "sync_session_class" in kw
    current = kw.get("sync_session_class")
    if current is None:
        current = target.class_.sync_session_class
    _checked(current)
    private = _private_subclass(current)
    target.configure(sync_session_class=private)

    def restore() -> None:
        if had_key:
            kw["sync_session_class"] = current
        else:
            kw.pop("sync_session_class", None)

    return private, restore


def _async_class(target: type) -> tuple[type[Session], Restore]:
    had_own = "sync_session_class" in target.__dict__
    current: type[Session] = target.sync_session_class  # type: ignore[attr-defined]
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
