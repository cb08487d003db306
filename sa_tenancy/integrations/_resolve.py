"""From a web request to a validated tenant schema name, before any SQL is sent.

Every web integration answers the same three questions the same way, in this order:

1. **Which tenant does the request name?** A *resolver* says: a plain callable that takes the
   framework's request object and returns a schema name, or ``None`` when the request names
   none. Ready-made ones read a header (:func:`header`), the first label of the host name
   (:func:`subdomain`) or a path parameter (:func:`path_param`); they work with Starlette/FastAPI,
   Flask and Django requests alike. Anything else (a JWT claim, an API key looked up in a shared
   table) is a few lines of your own.
2. **Names it none?** ``400``, unless the application explicitly configured a ``default=``
   tenant. There is never an implicit fallback to the default schema: a request that forgot its
   tenant must not read somebody's data.
3. **Is the name acceptable?** It is checked against the installation's own
   :class:`~sa_tenancy.NamePolicy` (``install(..., names=...)``), so the web layer and the
   sessions agree on what a tenant is. Rejected → ``400``, and no SQL was sent.

Whether the tenant *exists* is only known to the database; that is the ``404`` case, decided when
the request's session meets the database (see :mod:`sa_tenancy.integrations._errors`).

The outcome of a rejected request is a :class:`TenantRejected` carrying an HTTP status and a
``detail`` string, which each integration renders as its framework's ``{"detail": ...}`` JSON
error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..exc import InvalidSchemaName
from ..exc import TenancyError
from ..listener import Installation
from ..listener import installation_of

__all__ = [
    "Resolver",
    "TenantRejected",
    "header",
    "path_param",
    "require_installation",
    "resolve_schema",
    "subdomain",
]

#: A tenant resolver: the framework's request in, a schema name (or ``None``) out.
Resolver = Callable[[Any], "str | None"]


class TenantRejected(TenancyError):
    """The request cannot be served for tenant reasons; rendered as ``{"detail": ...}``.

    :param status_code: ``400`` (no tenant, or an invalid name) or ``404`` (no such tenant).
    :param detail: the message for the client; it never contains more than the (validated)
        tenant name.

    A resolver may raise it itself, e.g. ``TenantRejected(401, "token expired")``.
    """

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


TenantRejected.__module__ = "sa_tenancy.integrations"


class _Header:
    def __init__(self, name: str) -> None:
        self.name = name
        self.missing = f"missing tenant: send the {name} header"

    def __call__(self, request: Any) -> str | None:
        value = request.headers.get(self.name)
        return value if isinstance(value, str) else None

    def __repr__(self) -> str:
        return f"header({self.name!r})"


def header(name: str = "X-Tenant") -> Resolver:
    """Resolve the tenant from request header ``name`` (case-insensitive).

    Works with Starlette/FastAPI, Flask and Django requests (all have a case-insensitive
    ``request.headers``).
    """
    return _Header(name)


def _host(request: Any) -> str | None:
    get_host = getattr(request, "get_host", None)
    if callable(get_host):  # Django: checks ALLOWED_HOSTS
        host = get_host()
    else:
        host = getattr(request, "host", None)  # Flask/Werkzeug: checks TRUSTED_HOSTS
        if not isinstance(host, str):
            host = request.headers.get("host")  # Starlette
    return host if isinstance(host, str) else None


class _Subdomain:
    def __init__(self, domain: str) -> None:
        self.suffix = "." + domain.strip(".").lower()
        self.missing = f"missing tenant: use <tenant>{self.suffix} as the host name"

    def __call__(self, request: Any) -> str | None:
        host = _host(request)
        if not host or host.startswith("["):  # no host, or an IPv6 literal
            return None
        name = host.rsplit(":", 1)[0].lower() if ":" in host else host.lower()
        if not name.endswith(self.suffix):
            return None
        # "a.b.example.com" gives "a.b", which no name policy accepts: a 400, not a guess.
        return name[: -len(self.suffix)] or None

    def __repr__(self) -> str:
        return f"subdomain({self.suffix[1:]!r})"


def subdomain(domain: str) -> Resolver:
    """Resolve the tenant from the host name: ``acme.example.com`` → ``acme`` for ``example.com``.

    The host comes from Django's ``request.get_host()`` (validated against ``ALLOWED_HOSTS``),
    Flask's ``request.host`` (validated against ``TRUSTED_HOSTS`` when set), or Starlette's
    ``Host`` header. A host outside ``domain`` names no tenant (``400``).
    """
    return _Subdomain(domain)


class _PathParam:
    def __init__(self, name: str) -> None:
        self.name = name
        self.missing = f"missing tenant: the route has no {name!r} path parameter"

    def __call__(self, request: Any) -> str | None:
        # Starlette: path_params; Flask: view_args; Django: resolver_match.kwargs.
        for attribute in ("path_params", "view_args"):
            params = getattr(request, attribute, None)
            if params is not None:
                return params.get(self.name)  # type: ignore[no-any-return]
        match = getattr(request, "resolver_match", None)
        if match is not None:
            return match.kwargs.get(self.name)  # type: ignore[no-any-return]
        return None

    def __repr__(self) -> str:
        return f"path_param({self.name!r})"


def path_param(name: str = "tenant") -> Resolver:
    """Resolve the tenant from path parameter ``name``, e.g. a route ``/{tenant}/notes``."""
    return _PathParam(name)


def require_installation(factory: object) -> Installation:
    """The installation on ``factory``; raise if there is none.

    Without it, ``session.info["schema"]`` would be ignored and every request would silently
    read the default schema: the one mistake a tenancy integration must refuse to make.
    """
    installation = installation_of(factory)
    if installation is None:
        raise TenancyError(
            f"sa_tenancy is not installed on {factory!r}: call sa_tenancy.install(factory, ...) "
            "before handing the factory to an integration"
        )
    return installation


def resolve_schema(
    request: Any, factory: object, resolver: Resolver, default: str | None
) -> tuple[str, str]:
    """Return ``(schema, info_key)`` for ``request``, or raise :class:`TenantRejected` (400).

    The installation is looked up on every call, so the name policy in force is always the
    current one.
    """
    installation = require_installation(factory)
    raw = resolver(request)
    if raw is None or raw == "":
        if default is None:
            raise TenantRejected(
                400, getattr(resolver, "missing", "missing tenant: the request names no tenant")
            )
        raw = default
    try:
        schema = installation.names.validate(raw)
    except InvalidSchemaName as exc:
        raise TenantRejected(400, "invalid tenant name") from exc
    return schema, installation.info_key
