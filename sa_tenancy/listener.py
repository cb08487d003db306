"""``install()`` and ``uninstall()``: the session events that apply a tenant to each transaction.

The tenant is session state: ``SessionLocal(info={"schema": "acme"})``. Nothing else in the
process knows about it: no context variable, no thread-local, no module global. That is what
makes one engine and one session factory safe for every tenant, in threads, asyncio tasks,
workers and scripts alike: whoever makes the session names the tenant, and the session carries
it.

``install(target)`` registers three listeners on the session class that only ``target``'s
sessions use (see :mod:`sa_tenancy._targets`):

``after_begin``
    At each transaction begin (savepoints excluded): read ``session.info[info_key]``, validate
    it, refuse a tenant switch while the identity map still holds another tenant's objects, and
    hand the connection to the strategy. This runs before the transaction's first statement.

``do_orm_execute`` and ``before_flush``
    Refuse to go on when ``session.info[info_key]`` changed in the middle of a transaction (the
    connection still serves the old tenant), or when the transaction's begin failed.

Failing closed: when the begin cannot apply a tenant, the error propagates and the transaction
is unusable: ORM operations raise, and if nothing was applied the ``Connection`` is invalidated
so that Core statements on it raise too, instead of running against the default schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.orm import Session
from sqlalchemy.orm import SessionTransaction

from . import _targets
from .exc import FAIL_CLOSED
from .exc import SchemaRequired
from .exc import SchemaSwitchError
from .exc import TenancyError
from .names import NamePolicy
from .names import NameRule
from .strategies import Strategy
from .strategies import resolve_strategy

__all__ = ["Installation", "install", "uninstall"]

# session.info key of the per-session bookkeeping. It lives and dies with the session.
STATE_KEY = "_sa_tenancy_state"

_FAILED = object()


class _State:
    """What the last transaction begin of one session applied."""

    __slots__ = ("loaded", "raw", "schema", "transaction")

    def __init__(
        self, transaction: SessionTransaction, raw: object, schema: object, loaded: object
    ):
        self.transaction = transaction
        self.raw = raw  # the info value as given, to spot a change cheaply
        self.schema = schema  # validated schema, None (no tenant) or _FAILED
        self.loaded = loaded  # tenant whose objects the identity map may hold


def _same(value: object, state: _State) -> bool:
    if value is state.raw:
        return True
    # Compare as plain str: an info value with a hostile __eq__ must not vouch for itself.
    return type(value) is str and value == state.schema


@dataclass(eq=False)
class Installation:
    """What :func:`install` did: the target, its options, and a way to undo it.

    Returned by :func:`install`; ``uninstall()`` on it is the same as
    ``sa_tenancy.uninstall(target)``.
    """

    target: object
    session_class: type[Session]
    strategy: Strategy
    info_key: str
    require: bool
    names: NamePolicy
    _restore: Callable[[], None] = field(repr=False)
    _listeners: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)

    # -- listeners ---------------------------------------------------------------------------

    def _after_begin(
        self, session: Session, transaction: SessionTransaction, connection: Connection
    ) -> None:
        if transaction.nested:
            return  # a savepoint runs on the connection its transaction already set up
        info = session.info
        state: _State | None = info.get(STATE_KEY)
        raw = info.get(self.info_key)
        loaded = state.loaded if state is not None else None
        try:
            schema = self._schema_for(raw)
            if state is not None and schema != state.schema:
                if state.transaction is transaction:
                    raise SchemaSwitchError(
                        f"session.info[{self.info_key!r}] is {schema!r} but this transaction "
                        f"already serves {state.schema!r}; do not change the tenant mid-transaction"
                    )
                if schema != loaded and len(session.identity_map):
                    raise SchemaSwitchError(
                        f"the session's tenant changed from {loaded!r} to {schema!r} while its "
                        f"identity map holds {len(session.identity_map)} object(s) loaded for "
                        f"{loaded!r}; call session.close() or session.expunge_all() first "
                        "(better: one session per tenant)"
                    )
        except TenancyError:
            info[STATE_KEY] = _State(transaction, raw, _FAILED, loaded)
            # Nothing was applied: make the connection unusable rather than let a Core
            # statement run against the default schema.
            connection.invalidate()
            raise
        # Marked failed until the strategy returns: an exception leaves it so.
        info[STATE_KEY] = state = _State(transaction, raw, _FAILED, loaded)
        try:
            self.strategy.apply(connection, schema)
        except BaseException as error:
            # Unless the strategy says its failure left the connection unable to reach the
            # default schema (a search_path naming only the missing tenant), a Core statement
            # on it must not run untenanted.
            if not getattr(error, FAIL_CLOSED, False):
                connection.invalidate()
            raise
        state.schema = state.loaded = schema

    def _schema_for(self, raw: object) -> str | None:
        if raw is None:
            if self.require:
                raise SchemaRequired(
                    f"this session has no tenant: make it with "
                    f"SessionLocal(info={{{self.info_key!r}: 'tenant_name'}}); "
                    "the installation was made with require=True"
                )
            return None
        return self.names.validate(raw)

    def _check_current(self, session: Session) -> None:
        state: _State | None = session.info.get(STATE_KEY)
        if state is None or state.transaction is not session.get_transaction():
            return  # no transaction begun yet: after_begin will apply the current tenant
        if state.schema is _FAILED:
            raise TenancyError(
                "this transaction could not apply its tenant (see the earlier error); "
                "call session.rollback() or session.close() before using the session again"
            )
        current = session.info.get(self.info_key)
        if not _same(current, state):
            raise SchemaSwitchError(
                f"session.info[{self.info_key!r}] changed to {current!r} in the middle of a "
                f"transaction that serves {state.schema!r}; commit or roll back first, then "
                "close the session (better: one session per tenant)"
            )

    def _do_orm_execute(self, orm_execute_state: ORMExecuteState) -> None:
        self._check_current(orm_execute_state.session)

    def _before_flush(self, session: Session, flush_context: Any, instances: Any) -> None:
        self._check_current(session)

    # -- life cycle --------------------------------------------------------------------------

    def _register(self) -> None:
        self._listeners = {
            "after_begin": self._after_begin,
            "do_orm_execute": self._do_orm_execute,
            "before_flush": self._before_flush,
        }
        for name, fn in self._listeners.items():
            event.listen(self.session_class, name, fn)
        setattr(self.session_class, _targets.INSTALLATION_ATTR, self)

    def uninstall(self) -> None:
        """Remove the listeners and undo any change made to the target. Idempotent."""
        if self.session_class.__dict__.get(_targets.INSTALLATION_ATTR) is not self:
            return
        for name, fn in self._listeners.items():
            if event.contains(self.session_class, name, fn):
                event.remove(self.session_class, name, fn)
        delattr(self.session_class, _targets.INSTALLATION_ATTR)
        self._restore()

    @property
    def installed(self) -> bool:
        """Whether this installation is still active."""
        return self.session_class.__dict__.get(_targets.INSTALLATION_ATTR) is self


Installation.__module__ = "sa_tenancy"


def install(
    target: object,
    *,
    strategy: str | Strategy = "search_path",
    info_key: str = "schema",
    require: bool = False,
    names: NameRule | NamePolicy | None = None,
    extra_schemas: tuple[str, ...] | list[str] = (),
    allow_raw_sql: bool = False,
) -> Installation:
    """Make every session of ``target`` serve the tenant named in ``session.info[info_key]``.

    :param target: a ``sessionmaker``, ``async_sessionmaker``, ``scoped_session``,
        ``async_scoped_session``, or a ``Session`` / ``AsyncSession`` subclass. Only its sessions
        are affected.
    :param strategy: ``"search_path"`` (PostgreSQL, transaction-scoped ``search_path``),
        ``"translate_map"`` (SQLAlchemy's ``schema_translate_map``; PostgreSQL, MySQL/MariaDB,
        SQLite), ``"auto"`` (search_path on PostgreSQL, tenant files on SQLite, translate_map
        elsewhere), or any :class:`~sa_tenancy.Strategy`.
    :param info_key: the ``session.info`` key that names the tenant.
    :param require: refuse (:class:`~sa_tenancy.SchemaRequired`) any transaction of a session
        without a tenant. Without it, such sessions behave like plain sessions.
    :param names: which names are tenants: a regular expression, an allowlist, a predicate or a
        :class:`~sa_tenancy.NamePolicy`. Default: ``[a-z_][a-z0-9_]*``.
    :param extra_schemas: ``search_path`` only: schemas searched after the tenant, e.g.
        ``["public"]`` for extension types.
    :param allow_raw_sql: ``translate_map`` only: let ``text()`` SQL run untranslated in tenant
        transactions instead of refusing it.
    :returns: an :class:`Installation`.
    :raises TenancyError: if ``target`` is not supported, is the global ``Session``, or already
        has an installation (installing twice would apply the tenant twice).

    Example::

        SessionLocal = sessionmaker(engine)
        sa_tenancy.install(SessionLocal, strategy="search_path", require=True)
        with SessionLocal(info={"schema": "acme"}) as session:
            session.scalars(select(Invoice)).all()   # acme's invoices
    """
    if not isinstance(info_key, str) or not info_key:
        raise TenancyError("info_key must be a non-empty str")
    resolved = resolve_strategy(
        strategy, extra_schemas=tuple(extra_schemas), allow_raw_sql=allow_raw_sql
    )
    policy = names if isinstance(names, NamePolicy) else NamePolicy(names)
    session_class, restore = _targets.resolve(target)
    installation = Installation(
        target=target,
        session_class=session_class,
        strategy=resolved,
        info_key=info_key,
        require=require,
        names=policy,
        _restore=restore,
    )
    installation._register()
    return installation


def uninstall(target: object) -> bool:
    """Undo :func:`install` on ``target``. Returns whether an installation was removed."""
    installation = installation_of(target)
    if installation is None:
        return False
    installation.uninstall()
    return True


def installation_of(target: object) -> Installation | None:
    """The active :class:`Installation` for ``target``, if any (without changing anything)."""
    cls = _targets.installed_class(target)
    if cls is None:
        return None
    found = cls.__dict__.get(_targets.INSTALLATION_ATTR)
    return found if isinstance(found, Installation) else None
