"""Flask: an extension whose ``session`` is the current request's tenant session.

Flask-SQLAlchemy users know the shape: ``tenancy = FlaskTenancy(SessionLocal)`` at module level,
``tenancy.init_app(app)`` in the app factory, ``tenancy.session`` in views. The difference is
what the session is bound to: not a thread or a context variable but the request itself. The
first use of ``tenancy.session`` in a request resolves the tenant (a header by default), checks
the name against the installation's policy, and makes ``SessionLocal(info={"schema": tenant})``;
it is kept on :data:`flask.g` for the rest of that request and closed in the request's teardown,
which rolls back whatever the view did not commit (and everything, if the view raised). A
request that never touches ``tenancy.session`` never resolves a tenant and never opens a session.

``init_app`` also registers error handlers, so tenant errors become ``{"detail": ...}`` JSON:
no or invalid tenant → ``400`` (before any SQL), unknown tenant → ``404``.

Example::

    tenancy = FlaskTenancy(SessionLocal)

    def create_app():
        app = Flask(__name__)
        tenancy.init_app(app)
        return app

    @bp.get("/notes")
    def list_notes():
        return [n.body for n in tenancy.session.scalars(select(Note))]
"""

from __future__ import annotations

from typing import Any
from typing import Generic
from typing import TypeVar

from flask import Flask
from flask import g
from flask import has_request_context
from flask import jsonify
from flask import request
from flask.typing import ResponseReturnValue
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from ..exc import TenancyError
from ..exc import UnknownSchema
from ._errors import bind_of
from ._errors import tenant_missing
from ._errors import unknown
from ._resolve import Resolver
from ._resolve import TenantRejected
from ._resolve import header
from ._resolve import require_installation
from ._resolve import resolve_schema

__all__ = ["EXTENSION_KEY", "FlaskTenancy"]

#: The key of the extension in ``app.extensions``.
EXTENSION_KEY = "sa_tenancy"

# Attribute of flask.g holding (schema, session) for the current request.
_G_KEY = "_sa_tenancy_session"

_S = TypeVar("_S", bound=Session)


def _detail(status: int, detail: str) -> ResponseReturnValue:
    return jsonify(detail=detail), status


class FlaskTenancy(Generic[_S]):
    """Per-request tenant sessions for a Flask app.

    :param factory: a ``sessionmaker`` that :func:`sa_tenancy.install` was called on.
    :param app: call :meth:`init_app` with it right away.
    :param resolver: where the tenant comes from; default ``header("X-Tenant")``.
    :param default: the tenant of requests that name none; without it they get a ``400``.
    """

    def __init__(
        self,
        factory: Any,
        app: Flask | None = None,
        *,
        resolver: Resolver | None = None,
        default: str | None = None,
    ) -> None:
        require_installation(factory)
        self.factory = factory
        self.resolver = resolver or header("X-Tenant")
        self.default = default
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on ``app``: the request teardown that closes the session, error handlers.

        :raises TenancyError: if an instance is already registered on ``app``.
        """
        if EXTENSION_KEY in app.extensions:
            raise TenancyError(
                "a FlaskTenancy instance is already registered on this Flask app; use that one "
                f"(app.extensions[{EXTENSION_KEY!r}]) instead of registering another, or make "
                "a new app"
            )
        app.extensions[EXTENSION_KEY] = self
        app.teardown_request(self._teardown)
        app.register_error_handler(TenantRejected, self._rejected)
        app.register_error_handler(UnknownSchema, self._unknown)
        app.register_error_handler(sa_exc.ProgrammingError, self._database_error)
        app.register_error_handler(sa_exc.OperationalError, self._database_error)

    @property
    def session(self) -> _S:
        """The current request's session, made on first use for the request's tenant.

        :raises TenantRejected: no or invalid tenant (rendered as a ``400``).
        :raises TenancyError: outside a request (use
            :func:`sa_tenancy.integrations.workers.tenant_session` in scripts and CLI commands).
        """
        if not has_request_context():
            raise TenancyError(
                "tenancy.session needs a request (it serves the tenant the request names); in a "
                "script or CLI command use sa_tenancy.integrations.workers.tenant_session"
            )
        held: tuple[str, _S] | None = g.get(_G_KEY)
        if held is None:
            schema, key = resolve_schema(
                request._get_current_object(),  # type: ignore[attr-defined]
                self.factory,
                self.resolver,
                self.default,
            )
            held = (schema, self.factory(info={key: schema}))
            setattr(g, _G_KEY, held)
        return held[1]

    def _close(self) -> tuple[str, Session] | None:
        held: tuple[str, Session] | None = g.pop(_G_KEY, None)
        if held is not None:
            held[1].close()  # rolls back whatever was not committed
        return held

    def _teardown(self, exc: BaseException | None) -> None:
        self._close()

    def _rejected(self, exc: TenantRejected) -> ResponseReturnValue:
        return _detail(exc.status_code, exc.detail)

    def _unknown(self, exc: UnknownSchema) -> ResponseReturnValue:
        held = self._close()
        return _detail(404, unknown(held[0]) if held else "unknown tenant")

    def _database_error(self, exc: sa_exc.DBAPIError) -> ResponseReturnValue:
        held: tuple[str, Session] | None = g.get(_G_KEY)
        if held is not None:
            bind = bind_of(held[1])
            self._close()
            if tenant_missing(exc, bind, held[0]):
                return _detail(404, unknown(held[0]))
        raise exc
