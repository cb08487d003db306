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
same scope. Sync operations only: an ``async def`` operation would need an ``AsyncSession``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any
from typing import Generic
from typing import TypeVar

from django.http import HttpRequest  # type: ignore[import-untyped]
from django.http import JsonResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..exc import TenancyError
from ..exc import UnknownSchema
from ._errors import bind_of
from ._errors import could_be_missing
from ._errors import tenant_missing
from ._errors import unknown
from ._resolve import Resolver
from ._resolve import TenantRejected
from ._resolve import header
from ._resolve import require_installation
from ._resolve import resolve_schema

if TYPE_CHECKING:
    from ninja import NinjaAPI

__all__ = ["NinjaTenancy"]

_S = TypeVar("_S", bound=Session)
_F = TypeVar("_F", bound=Callable[..., Any])

# Attribute of a NinjaAPI that records the NinjaTenancy registered on it.
_API_ATTR = "_sa_tenancy"


class _Scope:
    """One request's tenant session, made on first use."""

    __slots__ = ("schema", "session", "verdict")

    def __init__(self) -> None:
        self.schema: str | None = None
        self.session: Session | None = None
        self.verdict: tuple[BaseException, JsonResponse | None] | None = None

    def close(self) -> Engine | None:
        session, self.session = self.session, None
        if session is None:
            return None
        bind = bind_of(session)
        session.close()  # rolls back whatever was not committed
        return bind


class NinjaTenancy(Generic[_S]):
    """Per-request tenant sessions for django-ninja operations.

    :param factory: a ``sessionmaker`` that :func:`sa_tenancy.install` was called on.
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
        """

        @functools.wraps(func)
        def tenant_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            scope = _Scope()
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
                delattr(request, self._attr)

        return tenant_view  # type: ignore[return-value]

    def session(self, request: HttpRequest) -> _S:
        """The session of ``request``'s tenant, made on first use and closed with the request.

        :raises TenantRejected: no or invalid tenant (rendered as a ``400``).
        :raises TenancyError: if the operation is not wrapped by :meth:`view` (there would be
            nobody to close the session).
        """
        scope: _Scope | None = getattr(request, self._attr, None)
        if scope is None:
            raise TenancyError(
                "this request has no tenant scope: call tenancy.init_api(api) before adding "
                "the operations, or decorate the operation with @decorate_view(tenancy.view)"
            )
        if scope.session is None:
            schema, key = resolve_schema(request, self.factory, self.resolver, self.default)
            scope.schema = schema
            scope.session = self.factory(info={key: schema})
        return scope.session  # type: ignore[return-value]

    def _exception_handler(self, request: HttpRequest, exc: Any) -> JsonResponse:
        response = self._response_for(request, exc)
        if response is None:
            raise exc
        return response

    def _response_for(self, request: HttpRequest, exc: BaseException) -> JsonResponse | None:
        """The JSON error for ``exc``, or ``None`` if it is not a tenant error."""
        if isinstance(exc, TenantRejected):
            return JsonResponse({"detail": exc.detail}, status=exc.status_code)
        scope: _Scope | None = getattr(request, self._attr, None)
        if scope is None or scope.schema is None:
            if isinstance(exc, UnknownSchema):
                return JsonResponse({"detail": "unknown tenant"}, status=404)
            return None
        if not (isinstance(exc, UnknownSchema) or could_be_missing(exc)):
            return None
        if scope.verdict is not None and scope.verdict[0] is exc:
            return scope.verdict[1]  # decided already by the exception handler
        bind = scope.close()
        missing = tenant_missing(exc, bind, scope.schema)
        response = JsonResponse({"detail": unknown(scope.schema)}, status=404) if missing else None
        scope.verdict = (exc, response)
        return response
