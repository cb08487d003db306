"""Framework integrations: one session per request (or job), for the tenant the request names.

Each integration is a leaf module, importable only when its extra is installed, and never
imported by the core or by this package:

``sa_tenancy.integrations.fastapi`` (``sa_tenancy[fastapi]``)
    ``session_dependency(SessionLocal)`` / ``async_session_dependency(AsyncSessionLocal)``:
    FastAPI dependencies yielding a tenant session.
``sa_tenancy.integrations.flask`` (``sa_tenancy[flask]``)
    ``FlaskTenancy(SessionLocal, app)``: ``tenancy.session`` is the request's tenant session;
    ``FlaskTenancy(db, app)`` for Flask-SQLAlchemy: ``db.session`` and ``Model.query`` are.
``sa_tenancy.integrations.django_ninja`` (``sa_tenancy[ninja]``)
    ``NinjaTenancy(SessionLocal).init_api(api)``: ``tenancy.session(request)`` in operations.
``sa_tenancy.integrations.workers`` (no extra)
    ``tenant_session(SessionLocal, "acme")`` and ``for_each_tenant(SessionLocal, fn, jobs=4)``
    (a ``FlaskTenancy`` in place of ``SessionLocal`` works too).

They share the tenant resolvers defined here (:func:`header`, :func:`subdomain`,
:func:`path_param`) and one error contract, rendered as JSON ``{"detail": ...}``:

======================================  ======
the request names no tenant             400
the name is not a valid tenant name     400 (decided before any SQL is sent)
no such tenant                          404
======================================  ======

None of them keeps the tenant anywhere but in the session they make: no context variable, no
thread-local, no module global. The session is closed when the request ends, which rolls back
whatever the handler did not commit.
"""

from __future__ import annotations

from ._resolve import Resolver
from ._resolve import TenantRejected
from ._resolve import header
from ._resolve import path_param
from ._resolve import subdomain

__all__ = ["Resolver", "TenantRejected", "header", "path_param", "subdomain"]
