"""FastAPI: a dependency that yields a session for the tenant the request names.

SQLAlchemy's FastAPI pattern is a dependency with ``yield``::

    async def get_session():
        async with SessionLocal() as session:
            yield session

This module adds the tenant: the dependency resolves it from the request (a header by default),
validates it against the installation's name policy, makes
``SessionLocal(info={"schema": tenant})``, yields it, and closes it when the request is over,
which rolls back whatever the handler did not commit (and everything, if it raised). Nothing else
in the process learns the tenant: two concurrent requests for different tenants hold two
sessions, and that is all.

Errors become FastAPI ``HTTPException``\\ s, i.e. ``{"detail": ...}`` JSON: no or invalid tenant
→ ``400`` before any SQL, unknown tenant → ``404`` (see :mod:`sa_tenancy.integrations._errors`
for how that is decided under each strategy).

Example::

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from sa_tenancy.integrations.fastapi import session_dependency

    SessionLocal = sessionmaker(engine)
    sa_tenancy.install(SessionLocal, strategy="search_path", require=True)
    TenantSession = Annotated[Session, Depends(session_dependency(SessionLocal))]

    @app.get("/notes")
    def list_notes(session: TenantSession):
        return session.scalars(select(Note)).all()

``async_session_dependency`` does the same for an ``async_sessionmaker``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import TypeVar

from fastapi import HTTPException
from fastapi import Request
from sqlalchemy.orm import Session

from ._errors import bind_of
from ._errors import tenant_missing
from ._errors import tenant_missing_async
from ._errors import unknown
from ._resolve import Resolver
from ._resolve import TenantRejected
from ._resolve import header
from ._resolve import require_installation
from ._resolve import resolve_schema

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["async_session_dependency", "session_dependency"]

_S = TypeVar("_S", bound=Session)
_AS = TypeVar("_AS", bound="AsyncSession")


def _resolved(
    request: Request, factory: object, resolver: Resolver, default: str | None
) -> tuple[str, str]:
    try:
        return resolve_schema(request, factory, resolver, default)
    except TenantRejected as exc:
        raise HTTPException(status_code=exc.status_code, detail=exc.detail) from exc


def session_dependency(
    factory: Callable[..., _S],
    *,
    resolver: Resolver | None = None,
    default: str | None = None,
) -> Callable[[Request], Iterator[_S]]:
    """A FastAPI dependency yielding a ``Session`` of ``factory`` for the request's tenant.

    :param factory: a ``sessionmaker`` (or other target) that :func:`sa_tenancy.install` was
        called on; checked now, so a forgotten ``install`` fails at start-up rather than serving
        the default schema.
    :param resolver: where the tenant comes from; default ``header("X-Tenant")``.
    :param default: the tenant of requests that name none. Without it (the default) such
        requests get a ``400``; there is no implicit fallback.

    The session is closed after the response (FastAPI runs the code after ``yield`` then);
    the handler commits what it wants kept.
    """
    require_installation(factory)
    resolve = resolver or header("X-Tenant")

    def tenant_session(request: Request) -> Iterator[_S]:
        schema, key = _resolved(request, factory, resolve, default)
        session = factory(info={key: schema})
        try:
            yield session
        except Exception as exc:
            bind = bind_of(session)
            session.close()  # rolls back; and the check below may need the connection
            if tenant_missing(exc, bind, schema):
                raise HTTPException(status_code=404, detail=unknown(schema)) from exc
            raise
        finally:
            session.close()

    return tenant_session


def async_session_dependency(
    factory: Callable[..., _AS],
    *,
    resolver: Resolver | None = None,
    default: str | None = None,
) -> Callable[[Request], AsyncIterator[_AS]]:
    """Like :func:`session_dependency`, for an ``async_sessionmaker``: yields an ``AsyncSession``.

    Needs ``sa_tenancy[asyncio]`` (greenlet), like any ``AsyncSession``.
    """
    require_installation(factory)
    resolve = resolver or header("X-Tenant")

    async def tenant_session(request: Request) -> AsyncIterator[_AS]:
        schema, key = _resolved(request, factory, resolve, default)
        session = factory(info={key: schema})
        try:
            yield session
        except Exception as exc:
            bind = session.bind
            await session.close()
            if await tenant_missing_async(exc, bind, schema):
                raise HTTPException(status_code=404, detail=unknown(schema)) from exc
            raise
        finally:
            await session.close()

    return tenant_session
