"""Namespaces: several applications' tenants side by side in one database (private).

A namespace is a short name (``[a-z][a-z0-9_]{0,30}``) that every lifecycle, listing and fleet
call takes as ``namespace=``; ``None`` is the default namespace, the one every tenant belonged
to before namespaces existed, so an existing deployment keeps working unchanged. A tenant of
another namespace is invisible to listings and fleet runs, and drops, renames and claims through
the wrong namespace fail as for a name that is not a tenant at all.

The namespace lives in the tenant's mark, so it travels with the tenant like the mark does:

* PostgreSQL: the schema comment ``sa_tenancy:tenant:<namespace>`` (``sa_tenancy:tenant`` in
  the default namespace; spares ``sa_tenancy:spare[:<namespace>]``), plus the ledger's
  ``namespace`` column ('' for the default), which lets a claim pick a spare of its own
  namespace with one indexed query;
* MySQL/MariaDB: the row of the marker table ``_sa_tenancy_tenant``;
* SQLite: a one-row table ``_sa_tenancy_tenant`` inside the tenant file, for a namespace other
  than the default only (a default-namespace file is exactly what it was).

Names are checked here, before any SQL: a namespace also ends up in a schema comment written
as a literal, so only this small alphabet is allowed.
"""

from __future__ import annotations

import re

from .exc import InvalidSchemaName

__all__ = ["RULE", "check", "mark", "namespace_of_mark"]

#: What a namespace name may look like (said in every error about one).
RULE = "a lowercase letter, then up to 30 lowercase letters, digits or underscores"
_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,30}")
_PREFIX = "sa_tenancy:"


def check(namespace: object) -> str:
    """The namespace as stored: '' for ``None`` (the default), else the validated name.

    :raises InvalidSchemaName: if ``namespace`` is not ``None`` or a valid name.
    """
    if namespace is None:
        return ""
    if not isinstance(namespace, str) or _PATTERN.fullmatch(namespace) is None:
        raise InvalidSchemaName(
            f"invalid namespace {namespace!r}: a namespace is {RULE} "
            "(or None for the default namespace)"
        )
    return namespace


def mark(kind: str, namespace: str) -> str:
    """``sa_tenancy:<kind>`` for the default namespace, ``sa_tenancy:<kind>:<namespace>`` else."""
    return f"{_PREFIX}{kind}:{namespace}" if namespace else f"{_PREFIX}{kind}"


def namespace_of_mark(value: str) -> str:
    """The namespace a mark names ('' for the default): ``sa_tenancy:tenant:billing`` -> billing."""
    parts = value.split(":", 2)
    return parts[2] if len(parts) == 3 else ""


def label(namespace: str) -> str:
    """How messages name a namespace."""
    return f"namespace {namespace!r}" if namespace else "the default namespace"
