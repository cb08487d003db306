"""Flask: an extension whose ``session`` is the current request's tenant session.

Two shapes, one contract (the tenant from the request, ``400``/``404`` as JSON, the session
closed, and so rolled back, when the request ends):

**A sessionmaker.** ``tenancy = FlaskTenancy(SessionLocal)`` at module level,
``tenancy.init_app(app)`` in the app factory, ``tenancy.session`` in views. The first use of
``tenancy.session`` in a request resolves the tenant (a header by default), checks the name
against the installation's policy, and makes ``SessionLocal(info={"schema": tenant})``; it is
kept on :data:`flask.g` for the rest of that request and closed in the request's teardown. A
request that never touches ``tenancy.session`` never resolves a tenant and never opens a session.

**Flask-SQLAlchemy.** ``tenancy = FlaskTenancy(db)`` with the ``SQLAlchemy`` object: then
``db.session``, ``Model.query``, ``db.paginate()`` and ``db.get_or_404()`` serve the request's
tenant, and views need not change. ``db.session`` is a ``scoped_session`` whose scope is the
*application context*; that scope is wrong for a tenant in two ways. Inside an outer
``with app.app_context():`` (the usual test fixture) every request shares the app context, so
one session, and its tenant, would serve the next request too. And Flask-SQLAlchemy closes it
in the app context's teardown, after the request is gone. So ``FlaskTenancy(db)`` changes two
things of ``db.session``'s registry and nothing else:

* its *scope*: inside a request of an app this extension is registered on, the scope is the
  request itself (the request context object, not its ``id()``, so a key can never be reused by
  a later request); everywhere else, Flask-SQLAlchemy's own scope;
* its *creation*: a request's session is made for the request's tenant; outside a request no
  tenant is known, and with ``require=True`` (the default when ``FlaskTenancy`` installs)
  ``db.session`` raises :class:`~sa_tenancy.SchemaRequired` at once, pointing to
  :func:`~sa_tenancy.integrations.workers.tenant_session`.

The request's teardown closes the session and removes it from the registry, so the next request
on the same thread, in the same app context or not, starts from nothing.

Flask-SQLAlchemy's sessions find their engine through the current app, so outside an app
context they cannot run at all. Jobs get tenant sessions with
``tenant_session(tenancy, "acme")`` / ``for_each_tenant(tenancy, fn)``: given a
``FlaskTenancy``, those push the app's context around each session, in the thread that uses it.

``init_app`` also registers error handlers, so tenant errors become ``{"detail": ...}`` JSON:
no or invalid tenant → ``400`` (before any SQL), unknown tenant → ``404``.

Example::

    tenancy = FlaskTenancy(SessionLocal)        # or FlaskTenancy(db) for Flask-SQLAlchemy

    def create_app():
        app = Flask(__name__)
        tenancy.init_app(app)
        return app

    @bp.get("/notes")
    def list_notes():
        return [n.body for n in tenancy.session.scalars(select(Note))]
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from contextlib import nullcontext
from typing import Any
from typing import Generic
from typing import TypeVar

from flask import Flask
from flask import current_app
from flask import g
from flask import has_app_context
from flask import has_request_context
from flask import jsonify
from flask import request
from flask.globals import request_ctx
from flask.typing import ResponseReturnValue
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker
from sqlalchemy.util import ScopedRegistry
from sqlalchemy.util import ThreadLocalRegistry

from ..exc import SchemaRequired
from ..exc import TenancyError
from ..exc import UnknownSchema
from ..listener import Installation
from ..listener import install
from ..listener import installation_of
from ..strategies import Strategy
from ._errors import bind_of
from ._errors import tenant_missing
from ._errors import unknown
from ._resolve import Resolver
from ._resolve import TenantRejected
from ._resolve import header
from ._resolve import require_installation
from ._resolve import resolve_schema
from .workers import JobSource

__all__ = ["EXTENSION_KEY", "FlaskTenancy"]

#: The key of the extension in ``app.extensions``.
EXTENSION_KEY = "sa_tenancy"

# Attribute of flask.g holding (schema, session) for the current request.
_G_KEY = "_sa_tenancy_session"

# Attribute of a Flask-SQLAlchemy scoped_session naming the FlaskTenancy that serves it.
_SCOPED_ATTR = "_sa_tenancy_flask"

_S = TypeVar("_S", bound=Session)


def _detail(status: int, detail: str) -> ResponseReturnValue:
    return jsonify(detail=detail), status


def _flask_sqlalchemy_db(obj: object) -> Any:
    """The Flask-SQLAlchemy ``SQLAlchemy`` object behind ``obj`` (itself or its ``db.session``).

    ``flask_sqlalchemy`` is never imported here: if ``obj`` is one of its objects, the module is
    imported already.
    """
    fsa = sys.modules.get("flask_sqlalchemy")
    if fsa is None:
        return None
    if isinstance(obj, fsa.SQLAlchemy):
        return obj
    factory = obj.session_factory if isinstance(obj, scoped_session) else obj
    if isinstance(factory, sessionmaker):
        db = factory.kw.get("db")
        if isinstance(db, fsa.SQLAlchemy):
            return db
    return None


class FlaskTenancy(Generic[_S]):
    """Per-request tenant sessions for a Flask app.

    :param factory: a ``sessionmaker`` that :func:`sa_tenancy.install` was called on, or a
        Flask-SQLAlchemy ``SQLAlchemy`` object (``db``; ``db.session`` is accepted too).
    :param app: call :meth:`init_app` with it right away.
    :param resolver: where the tenant comes from; default ``header("X-Tenant")``.
    :param default: the tenant of requests that name none; without it they get a ``400``.
    :param strategy: Flask-SQLAlchemy only, when ``db.session`` has no installation yet:
        ``FlaskTenancy`` installs one, with this strategy (default ``"auto"``) and
        ``require=True``. For other options, call ``sa_tenancy.install(db.session, ...)``
        before making the ``FlaskTenancy``.
    :raises TenancyError: no installation on a sessionmaker; a ``strategy`` that cannot be
        used; a ``db`` that another ``FlaskTenancy`` serves already; a plain ``scoped_session``.
    """

    def __init__(
        self,
        factory: Any,
        app: Flask | None = None,
        *,
        resolver: Resolver | None = None,
        default: str | None = None,
        strategy: str | Strategy | None = None,
    ) -> None:
        self.resolver = resolver or header("X-Tenant")
        self.default = default
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        db = _flask_sqlalchemy_db(factory)
        self.db: Any = db
        self._scoped: scoped_session[Any] | None = None
        if db is not None:
            self.factory: Any = self._adopt(db, strategy)
        else:
            if strategy is not None:
                raise TenancyError(
                    "strategy= is for a Flask-SQLAlchemy db only; call "
                    "sa_tenancy.install(SessionLocal, strategy=...) on your sessionmaker instead"
                )
            if isinstance(factory, scoped_session):
                raise TenancyError(
                    "FlaskTenancy makes one session per request itself: pass the sessionmaker "
                    "(scoped.session_factory) and use tenancy.session in views, not a "
                    "scoped_session, whose scope is not the request"
                )
            require_installation(factory)
            self.factory = factory
        if app is not None:
            self.init_app(app)

    # -- Flask-SQLAlchemy ------------------------------------------------------------------

    def _adopt(self, db: Any, strategy: str | Strategy | None) -> Any:
        scoped: scoped_session[Any] = db.session
        if getattr(scoped, _SCOPED_ATTR, None) is not None:
            raise TenancyError(
                "a FlaskTenancy already serves this Flask-SQLAlchemy db; use that one "
                "(register it on several apps with init_app) instead of making another"
            )
        installation: Installation | None = installation_of(scoped)
        if installation is None:
            install(scoped, strategy="auto" if strategy is None else strategy, require=True)
        elif strategy is not None:
            raise TenancyError(
                "db.session already has an installation (its strategy is "
                f"{installation.strategy!r}): drop strategy= from FlaskTenancy, or uninstall "
                "first"
            )
        registry = scoped.registry
        if isinstance(registry, ThreadLocalRegistry):  # session_options={"scopefunc": None}
            import threading

            outer: Callable[[], Any] = threading.get_ident
            registry = scoped.registry = ScopedRegistry(registry.createfunc, outer)
        else:
            outer = registry.scopefunc
        self._outer_scope = outer
        registry.scopefunc = self._scope
        registry.createfunc = self._create
        setattr(scoped, _SCOPED_ATTR, self)
        self._scoped = scoped
        return scoped.session_factory

    def _serves_request(self) -> bool:
        return has_request_context() and current_app.extensions.get(EXTENSION_KEY) is self

    def _scope(self) -> Any:
        if self._serves_request():
            return request_ctx._get_current_object()  # type: ignore[attr-defined]
        return self._outer_scope()

    def _create(self) -> Any:
        if self._serves_request():
            return self._open()
        if require_installation(self.factory).require:
            raise SchemaRequired(
                "db.session has no tenant outside a request: in scripts, CLI commands, jobs and "
                "test fixtures use `with tenant_session(tenancy, 'acme') as session:` "
                "(sa_tenancy.integrations.workers)"
            )
        return self.factory()

    # -- requests ----------------------------------------------------------------------------

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
        self._apps.add(app)
        app.teardown_request(self._teardown)
        app.register_error_handler(TenantRejected, self._rejected)
        app.register_error_handler(UnknownSchema, self._unknown)
        app.register_error_handler(sa_exc.ProgrammingError, self._database_error)
        app.register_error_handler(sa_exc.OperationalError, self._database_error)

    @property
    def session(self) -> _S:
        """The current request's session, made on first use for the request's tenant.

        With Flask-SQLAlchemy it is the session ``db.session`` stands for in this request.

        :raises TenantRejected: no or invalid tenant (rendered as a ``400``).
        :raises TenancyError: outside a request (use
            :func:`sa_tenancy.integrations.workers.tenant_session` in scripts and CLI commands).
        """
        if not has_request_context():
            raise TenancyError(
                "tenancy.session needs a request (it serves the tenant the request names); in a "
                "script or CLI command use sa_tenancy.integrations.workers.tenant_session"
            )
        if self._scoped is not None:
            return self._scoped()  # type: ignore[no-any-return]
        held: tuple[str, _S] | None = g.get(_G_KEY)
        return held[1] if held is not None else self._open()

    def _open(self) -> _S:
        schema, key = resolve_schema(
            request._get_current_object(),  # type: ignore[attr-defined]
            self.factory,
            self.resolver,
            self.default,
        )
        session: _S = self.factory(info={key: schema})
        setattr(g, _G_KEY, (schema, session))
        return session

    def _close(self) -> tuple[str, Session] | None:
        held: tuple[str, Session] | None = g.pop(_G_KEY, None)
        if held is not None:
            held[1].close()  # rolls back whatever was not committed
        if self._scoped is not None:
            self._scoped.remove()  # this request's entry: the scope is still the request
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

    # -- jobs --------------------------------------------------------------------------------

    def _sa_tenancy_jobs(self) -> JobSource[_S]:
        """What :mod:`~sa_tenancy.integrations.workers` needs to make sessions for jobs."""
        if self.db is None:
            return JobSource(self.factory)
        return JobSource(self.factory, context=self._app_context, engine=self._engine)

    def _app_context(self) -> AbstractContextManager[object]:
        if has_app_context() and current_app.extensions.get(EXTENSION_KEY) is self:
            return nullcontext()
        apps = list(self._apps)
        if len(apps) != 1:
            where = "no app yet: call tenancy.init_app(app)" if not apps else "several apps"
            raise TenancyError(
                f"this FlaskTenancy serves {where}; Flask-SQLAlchemy sessions need an app "
                "context to find their engine: run the job inside `with app.app_context():`"
            )
        return apps[0].app_context()

    def _engine(self) -> Engine | None:
        engine: Engine = self.db.engine  # the current app's default engine
        return engine
