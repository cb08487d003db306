"""Django-ninja: SQLAlchemy tenant sessions in ninja operations.

This is SQLAlchemy inside a ninja API, not the Django ORM: Django routes the request, ninja
parses and serialises, and the operation reads and writes through a SQLAlchemy session made for
the tenant the request names.

The session belongs to the request. ``tenancy.init_api(api)`` wraps every operation of ``api``
at the *view* level (ninja's ``add_decorator(..., mode="view")``), so the request gets a tenant
scope before ninja runs the operation and loses it after ninja has rendered the response (ORM
objects returned by the operation are serialised while their session is still open). Inside,
the first ``tenancy.session(request)`` resolves the tenant (a header by default), checks the
name against the installation's policy and makes ``SessionLocal(info={"schema": tenant})``;
later calls in the same request return the same session. When the view returns or raises, the
session is closed, which rolls back whatever was not committed. The scope is an attribute of the
``HttpRequest``: request state, not a global.

``init_api`` also registers exception handlers, so tenant errors become ``{"detail": ...}``
JSON: no or invalid tenant → ``400`` (before any SQL), unknown tenant → ``404``.

Example::

    api = NinjaAPI()
    tenancy = NinjaTenancy(SessionLocal)
    tenancy.init_api(api)

    @api.get("/notes", response=list[NoteOut])
    def list_notes(request):
        return tenancy.session(request).scalars(select(Note)).all()

For a single operation (or without ``init_api``), ``@decorate_view(tenancy.view)`` gives the
same scope.

**Async operations.** ``NinjaTenancy(async_sessionmaker(...))`` serves ``async def``
operations: ``tenancy.session(request)`` is then the request's ``AsyncSession`` (``await
session.scalars(...)``), closed with ``await`` when the view ends. The view wrapper is async
for async operations (ninja's ``AsyncOperation.run`` is a coroutine function: a sync wrapper
would return the coroutine unawaited, and the scope would be gone before the operation ran).
ninja calls exception handlers synchronously, so for an async operation the handler answers what
needs no I/O (``400``, and ``404`` for ``UnknownSchema``) and lets a database error through to
the async view wrapper, which awaits the existence check. Returned ORM objects are serialised
after the operation, where an async session cannot load expired attributes: use
``async_sessionmaker(engine, expire_on_commit=False)`` or return plain data.

A ``NinjaTenancy`` serves one kind of operation, the kind its factory makes sessions for: an
``AsyncSession`` in a sync operation cannot be awaited, and a sync ``Session`` in an ``async
def`` operation would block the event loop; both are refused with a message saying which
factory the operation needs (an API with both kinds uses a second ``NinjaTenancy`` through
``@decorate_view(other.view)``).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any
from typing import Generic
from typing import TypeVar

from django.http import HttpRequest  # type: ignore[import-untyped]
from django.http import JsonResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from ..exc import TenancyError
from ..exc import UnknownSchema
from ._errors import bind_of
from ._errors import could_be_missing
from ._errors import tenant_missing
from ._errors import tenant_missing_async
from ._errors import unknown
from ._resolve import Resolver
from ._resolve import TenantRejected
from ._resolve import header
from ._resolve import require_installation
from ._resolve import resolve_schema

if TYPE_CHECKING:
    from ninja import NinjaAPI

__all__ = ["NinjaTenancy"]

_S = TypeVar("_S")  # Session, or AsyncSession for an async_sessionmaker
_F = TypeVar("_F", bound=Callable[..., Any])

# Attribute of a NinjaAPI that records the NinjaTenancy registered on it.
_API_ATTR = "_sa_tenancy"

# What the request attribute holds once the view has ended (for a precise error message).
_ENDED = "ended"


def _is_async_factory(factory: object) -> bool:
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")  # imported if factory is async
    return asyncio_ext is not None and isinstance(
        factory, (asyncio_ext.async_sessionmaker, asyncio_ext.async_scoped_session)
    )


class _Scope:
    """One request's tenant session, made on first use."""

    __slots__ = ("is_async", "schema", "session", "verdict")

    def __init__(self, *, is_async: bool) -> None:
        self.is_async = is_async
        self.schema: str | None = None
        self.session: Any = None
        self.verdict: tuple[BaseException, JsonResponse | None] | None = None

    def close(self) -> Engine | None:
        session, self.session = self.session, None
        if session is None:
            return None
        bind = bind_of(session)
        session.close()  # rolls back whatever was not committed
        return bind

    async def aclose(self) -> Any:
        session, self.session = self.session, None
        if session is None:
            return None
        bind = session.bind
        await session.close()  # rolls back whatever was not committed
        return bind


class NinjaTenancy(Generic[_S]):
    """Per-request tenant sessions for django-ninja operations.

    :param factory: a ``sessionmaker`` (sync operations) or an ``async_sessionmaker`` (``async
        def`` operations) that :func:`sa_tenancy.install` was called on.
    :param resolver: where the tenant comes from; default ``header("X-Tenant")``.
    :param default: the tenant of requests that name none; without it they get a ``400``.
    """

    def __init__(
        self, factory: Any, *, resolver: Resolver | None = None, default: str | None = None
    ) -> None:
        require_installation(factory)
        self.factory = factory
        self.resolver = resolver or header("X-Tenant")
        self.default = default
        self.is_async = _is_async_factory(factory)
        self._attr = f"_sa_tenancy_scope_{id(self)}"

    def init_api(self, api: NinjaAPI) -> None:
        """Give every operation of ``api`` a tenant scope, and map tenant errors to JSON.

        Call it before adding routers (ninja applies API decorators when it builds the URLs).

        :raises TenancyError: if a ``NinjaTenancy`` is already registered on ``api``.
        """
        if getattr(api, _API_ATTR, None) is not None:
            raise TenancyError(
                "a NinjaTenancy instance is already registered on this NinjaAPI; use that one "
                f"(api.{_API_ATTR}) instead of registering another"
            )
        setattr(api, _API_ATTR, self)
        api.add_decorator(self.view, mode="view")
        for exc_class in (
            TenantRejected,
            UnknownSchema,
            sa_exc.ProgrammingError,
            sa_exc.OperationalError,
        ):
            api.add_exception_handler(exc_class, self._exception_handler)

    def view(self, func: _F) -> _F:
        """Wrap a Django view (a ninja operation's view) in a tenant scope.

        Use it through ``init_api``, or per operation with ``@decorate_view(tenancy.view)``.
        A coroutine function (an ``async def`` operation) gets an async wrapper.
        """
        if inspect.iscoroutinefunction(func):
            return self._async_view(func)

        @functools.wraps(func)
        def tenant_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            scope = _Scope(is_async=False)
            setattr(request, self._attr, scope)
            try:
                return func(request, *args, **kwargs)
            except Exception as exc:
                response = self._response_for(request, exc)
                if response is None:
                    raise
                return response
            finally:
                scope.close()
                setattr(request, self._attr, _ENDED)

        return tenant_view  # type: ignore[return-value]

    def _async_view(self, func: _F) -> _F:
        @functools.wraps(func)
        async def tenant_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            scope = _Scope(is_async=True)
            setattr(request, self._attr, scope)
            try:
                return await func(request, *args, **kwargs)
            except Exception as exc:
                response = await self._async_response_for(request, scope, exc)
                if response is None:
                    raise
                return response
            finally:
                await scope.aclose()
                setattr(request, self._attr, _ENDED)

        return tenant_view  # type: ignore[return-value]

    def session(self, request: HttpRequest) -> _S:
        """The session of ``request``'s tenant, made on first use and closed with the request.

        An ``AsyncSession`` if the factory is an ``async_sessionmaker`` (``async def``
        operations); a ``Session`` otherwise.

        :raises TenantRejected: no or invalid tenant (rendered as a ``400``).
        :raises TenancyError: if the operation is not wrapped by :meth:`view` (there would be
            nobody to close the session), if the request has ended, or if the operation's kind
            (sync or ``async def``) does not match the factory's.
        """
        scope: _Scope | str | None = getattr(request, self._attr, None)
        if scope is None:
            raise TenancyError(
                "this request has no tenant scope: call tenancy.init_api(api) before adding "
                "the operations, or decorate the operation with @decorate_view(tenancy.view)"
            )
        if not isinstance(scope, _Scope):
            raise TenancyError(
                "this request's tenant scope has ended: its session was closed when the "
                "operation returned; use tenancy.session(request) only inside the operation "
                "(for work after the response, use sa_tenancy.integrations.workers.tenant_session)"
            )
        if scope.is_async != self.is_async:
            raise TenancyError(self._mismatch(scope.is_async))
        if scope.session is None:
            schema, key = resolve_schema(request, self.factory, self.resolver, self.default)
            scope.schema = schema
            scope.session = self.factory(info={key: schema})
        return scope.session  # type: ignore[no-any-return]

    def _mismatch(self, async_operation: bool) -> str:
        if async_operation:
            return (
                "this is an async def operation, but this NinjaTenancy makes sync Sessions, "
                "which would block the event loop: give the async operations a "
                "NinjaTenancy(async_sessionmaker(engine, expire_on_commit=False)), installed "
                "with sa_tenancy.install(...), or make the operation a plain def"
            )
        return (
            "this is a sync operation, but this NinjaTenancy makes AsyncSessions, which it "
            "cannot await: make the operation async def (and await the session's methods), "
            "or give the sync operations a NinjaTenancy(sessionmaker(engine))"
        )

    def _exception_handler(self, request: HttpRequest, exc: Any) -> JsonResponse:
        response = self._response_for(request, exc)
        if response is None:
            raise exc
        return response

    def _response_for(self, request: HttpRequest, exc: BaseException) -> JsonResponse | None:
        """The JSON error for ``exc``, or ``None`` if it is not a tenant error (or, for an async
        operation, if deciding needs I/O: the async view wrapper decides then)."""
        if isinstance(exc, TenantRejected):
            return JsonResponse({"detail": exc.detail}, status=exc.status_code)
        scope = getattr(request, self._attr, None)
        if not isinstance(scope, _Scope) or scope.schema is None:
            if isinstance(exc, UnknownSchema):
                return JsonResponse({"detail": "unknown tenant"}, status=404)
            return None
        if not (isinstance(exc, UnknownSchema) or could_be_missing(exc)):
            return None
        if scope.verdict is not None and scope.verdict[0] is exc:
            return scope.verdict[1]  # decided already by the exception handler
        if scope.is_async:
            if not isinstance(exc, UnknownSchema):
                return None  # the check needs I/O: the async view wrapper awaits it
            response = JsonResponse({"detail": unknown(scope.schema)}, status=404)
            scope.verdict = (exc, response)
            return response  # the session is closed by the async view wrapper
        bind = scope.close()
        missing = tenant_missing(exc, bind, scope.schema)
        response = JsonResponse({"detail": unknown(scope.schema)}, status=404) if missing else None
        scope.verdict = (exc, response)
        return response

    async def _async_response_for(
        self, request: HttpRequest, scope: _Scope, exc: BaseException
    ) -> JsonResponse | None:
        """:meth:`_response_for` for an async operation, awaiting the existence check."""
        if isinstance(exc, TenantRejected) or scope.schema is None:
            return self._response_for(request, exc)
        if not (isinstance(exc, UnknownSchema) or could_be_missing(exc)):
            return None
        if scope.verdict is not None and scope.verdict[0] is exc:
            return scope.verdict[1]
        bind = await scope.aclose()
        missing = await tenant_missing_async(exc, bind, scope.schema)
        response = JsonResponse({"detail": unknown(scope.schema)}, status=404) if missing else None
        scope.verdict = (exc, response)
        return response
