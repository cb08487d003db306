"""Validation and quoting of tenant schema names.

A tenant name usually comes from outside: a header, a subdomain, a job argument. It ends up as an
identifier in SQL, so it is checked *before* any SQL is sent, and then only ever written through
the dialect's ``identifier_preparer`` (as an identifier) or as a bound parameter (as a value).

Some rules always hold, whatever policy the application chooses:

* the name is a :class:`str` (never bytes, never an object whose ``__str__`` decides);
* it is 1 to 63 **bytes** in UTF-8: PostgreSQL silently truncates longer identifiers, so two long
  tenant names could land in one schema and share rows;
* it holds no NUL and no control character;
* it is not a system or shared schema: ``pg_*``, ``pg_catalog``, ``information_schema``,
  ``public``;
* it is not sa_tenancy's own: the ledger schema ``sa_tenancy``, or a reservoir spare
  ``sa_spare_*``. A spare is a fully built, empty schema waiting to be claimed by the next
  signup; a session or lifecycle call that could use it before then would plant rows that the
  next signup inherits. Only the library's own reservoir and migration code reaches spares,
  through :data:`INTERNAL_NAMES`.

On top of that, a policy decides which names are tenants. The default is the strict
``[a-z_][a-z0-9_]*``, which needs no quoting anywhere; an application can widen or narrow it with
a regular expression, an allowlist or a predicate (see :class:`NamePolicy`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Collection
from typing import Union

from sqlalchemy.engine import Dialect

from .exc import InvalidSchemaName

__all__ = ["DEFAULT_PATTERN", "NamePolicy", "NameRule", "quote_schema"]

#: The default policy: lowercase ASCII letters, digits and underscores, not starting with a
#: digit. Such names mean the same quoted or unquoted, on every dialect.
DEFAULT_PATTERN = re.compile(r"[a-z_][a-z0-9_]*")

#: What :func:`sa_tenancy.install` accepts as ``names=``: a regular expression (string or
#: compiled, matched against the whole name), an allowlist, or a predicate.
NameRule = Union[str, "re.Pattern[str]", Collection[str], Callable[[str], bool]]

MAX_BYTES = 63
#: The shared schema holding the version ledger (see :mod:`sa_tenancy._ledger`).
LEDGER_SCHEMA = "sa_tenancy"
#: Prefix of the reservoir's spare schemas (see :func:`sa_tenancy.fill_reservoir`).
SPARE_PREFIX = "sa_spare_"
_SPARE = re.compile(r"sa_spare_[0-9a-f]+")
_RESERVED = frozenset({"public", "information_schema", "pg_catalog", "pg_toast"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _shown(name: str) -> str:
    """Repr of a name for an error message, cut so a huge hostile name cannot flood logs."""
    return repr(name) if len(name) <= 70 else repr(name[:60]) + f"... ({len(name)} characters)"


def _base_check(name: object, *, what: str, allow_public: bool) -> str:
    if not isinstance(name, str):
        raise InvalidSchemaName(
            f"{what} must be a str, not {type(name).__name__}; "
            "decode or convert it explicitly before putting it in session.info"
        )
    # A str subclass may override __str__/__eq__; work on the plain value from here on.
    name = str.__str__(name)
    if not name:
        raise InvalidSchemaName(f"{what} is empty; name a schema, or leave the key out")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        # A lone surrogate is no character at all: no driver could send it.
        raise InvalidSchemaName(
            f"{what} {name.encode('utf-8', 'backslashreplace').decode('ascii', 'replace')!r} "
            "is not valid Unicode (it holds a lone surrogate); decode the input properly"
        ) from None
    if size > MAX_BYTES:
        raise InvalidSchemaName(
            f"{what} {_shown(name)} is {size} bytes; PostgreSQL keeps only {MAX_BYTES} and would "
            "silently truncate it (two long names could share a schema). Use a shorter name."
        )
    if _CONTROL.search(name):
        raise InvalidSchemaName(f"{what} {_shown(name)} contains a NUL or control character")
    lowered = name.lower()
    if lowered.startswith("pg_") or (
        lowered in _RESERVED and not (allow_public and name == "public")
    ):
        raise InvalidSchemaName(
            f"{what} {_shown(name)} is a reserved or system schema; a tenant needs its own schema"
        )
    return name


def _refuse_internal(name: str) -> str:
    """Refuse sa_tenancy's own schemas, compared case-insensitively (MySQL folds case)."""
    lowered = name.lower()
    if lowered.startswith(SPARE_PREFIX):
        raise InvalidSchemaName(
            f"{_shown(name)} is a reservoir spare name ({SPARE_PREFIX}*), not a tenant: spares "
            "become tenants only through claim_tenant(); choose another name"
        )
    if lowered == LEDGER_SCHEMA:
        raise InvalidSchemaName(
            f"{_shown(name)} is sa_tenancy's own shared schema (the version ledger); "
            "choose another tenant name"
        )
    return name


class NamePolicy:
    """Decides which schema names are acceptable tenants.

    ``rule`` may be:

    * ``None``: :data:`DEFAULT_PATTERN`;
    * a regular expression, as a string or compiled, which must match the *whole* name;
    * a collection of names (an allowlist), e.g. a ``frozenset`` loaded at start-up;
    * a predicate ``Callable[[str], bool]``.

    The fixed rules of this module (type, 63 bytes, no control characters, no system schemas,
    not the ledger schema ``sa_tenancy`` nor a reservoir spare ``sa_spare_*``) apply whatever
    the rule says.

    Example::

        NamePolicy(r"[a-z][a-z0-9_-]*")          # allow hyphens
        NamePolicy({"acme", "globex"})            # only these two
        NamePolicy(lambda n: n.startswith("t_"))  # any predicate
    """

    __slots__ = ("_check", "_valid", "description")

    #: How many accepted names a policy with a fixed rule remembers (a dict lookup instead of
    #: the checks at every transaction begin); forgotten all at once when full.
    REMEMBER = 4096

    def __init__(self, rule: NameRule | None = None) -> None:
        self._check: Callable[[str], bool]
        # Accepted names, for fixed rules only (a pattern or an allowlist): a predicate may
        # change its mind, so it is asked every time.
        self._valid: dict[str, str] | None = {}
        if rule is None:
            rule = DEFAULT_PATTERN
        if isinstance(rule, str):
            rule = re.compile(rule)
        if isinstance(rule, re.Pattern):
            pattern = rule
            self._check = lambda name: pattern.fullmatch(name) is not None
            self.description = f"must match {pattern.pattern!r}"
        elif callable(rule):
            self._check = rule
            self._valid = None
            self.description = f"must satisfy {getattr(rule, '__name__', repr(rule))}"
        elif isinstance(rule, Collection):
            allowed = frozenset(rule)
            if not all(isinstance(n, str) for n in allowed):
                raise TypeError("an allowlist of schema names must hold only str")
            self._check = allowed.__contains__
            self.description = f"must be one of the {len(allowed)} allowed tenants"
        else:  # pragma: no cover - guarded by the type annotation
            raise TypeError(f"cannot use {rule!r} as a name rule")

    def validate(self, name: object) -> str:
        """Return ``name`` as a plain :class:`str` if it is an acceptable tenant schema.

        :raises InvalidSchemaName: with the reason, before anything is sent to a database.
        """
        valid = self._valid
        if valid is not None and type(name) is str:  # exactly str: a subclass may lie
            known = valid.get(name)
            if known is not None:
                return known
        checked = _refuse_internal(_base_check(name, what="tenant schema name", allow_public=False))
        if not self._check(checked):
            raise InvalidSchemaName(
                f"tenant schema name {_shown(checked)} is not allowed: it {self.description}. "
                "Widen the policy with install(..., names=...) if it is a real tenant."
            )
        if valid is not None:
            if len(valid) >= self.REMEMBER:
                valid.clear()
            valid[checked] = checked
        return checked

    def __repr__(self) -> str:
        return f"NamePolicy({self.description})"


NamePolicy.__module__ = "sa_tenancy"


class _InternalNames:
    """The default policy, plus the reservoir's spares: for sa_tenancy's own code only.

    Building a spare (``fill_reservoir`` stamps or upgrades it while it is built) and migrating
    one (the fleet runner keeps spares current) legitimately name ``sa_spare_<hex>``, so
    :mod:`sa_tenancy.migrate` validates with this. Sessions and the lifecycle functions never
    do: they refuse spares.
    """

    __slots__ = ()

    def validate(self, name: object) -> str:
        checked = _base_check(name, what="schema name", allow_public=False)
        if _SPARE.fullmatch(checked):
            return checked
        return _DEFAULT_POLICY.validate(checked)


_DEFAULT_POLICY = NamePolicy()
#: Validator for sa_tenancy's own reservoir and migration code (see :class:`_InternalNames`).
INTERNAL_NAMES = _InternalNames()


def validate_extra_schema(name: object) -> str:
    """Validate a schema that is added to every tenant's path (e.g. ``public`` for extensions)."""
    return _base_check(name, what="extra schema name", allow_public=True)


def quote_schema(dialect: Dialect, name: str) -> str:
    """Quote a validated schema name as an identifier for ``dialect``.

    Always quoted, so a name that needs quoting (upper case, hyphens under a widened policy)
    means exactly itself, and one that does not is unchanged in meaning.
    """
    return dialect.identifier_preparer.quote_identifier(name)
