"""``install()`` and ``uninstall()``: the session events that apply a tenant to each transaction.

The tenant is session state: ``SessionLocal(info={"schema": "acme"})``. Nothing else in the
process knows about it: no context variable, no thread-local, no module global. That is what
makes one engine and one session factory safe for every tenant, in threads, asyncio tasks,
workers and scripts alike: whoever makes the session names the tenant, and the session carries
it.

``install(target)`` registers listeners on the session class that only ``target``'s sessions
use (see :mod:`sa_tenancy._targets`):

``after_begin`` (registered first, before any other listener of that class)
    At each transaction begin (savepoints excluded): read ``session.info[info_key]``, validate
    it, refuse a tenant switch while the identity map still holds another tenant's objects,
    *claim* the DBAPI connection, and hand the connection to the strategy. This runs before the
    transaction's first statement, and before any other ``after_begin`` listener of the class.

``after_commit`` and ``after_transaction_end``
    Release the claim; put back what a ``Connection`` that outlives the session (a session
    bound to a ``Connection``) had before; record whose temporary objects the connection holds.

``do_orm_execute`` and ``before_flush``
    Refuse to go on when the transaction's begin failed or the tenant changed under it.

and an ``info`` property whose dictionary refuses a tenant change while the session holds
anything of the old tenant (:mod:`sa_tenancy._info`). The bookkeeping lives in a private
attribute of the session, not in ``session.info``, so nothing done to ``info`` can switch a guard
off.

**One connection serves one tenant at a time.** A claim on the pooled DBAPI connection records
which tenant its open session transactions serve. Two sessions can meet on one DBAPI connection:
sessions bound to one ``Connection`` (the usual "join an external transaction" test fixture), or a
``StaticPool``. A second session for *another* tenant (or for none) would re-point the connection
under the first one, so its begin is refused with :class:`~sa_tenancy.SchemaSwitchError`; sessions
of the *same* tenant share it, and the last one to end restores the ``Connection``.

Failing closed: when the begin cannot apply a tenant, the error propagates and the transaction is
unusable: ORM operations raise, and the ``Connection`` is invalidated (or, when another open
session uses the same DBAPI connection, marked so that every statement of the refused session
raises), instead of running against the default schema or another tenant.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.orm import Session
from sqlalchemy.orm import SessionTransaction

from . import _targets
from ._auto import resolve_strategy
from ._claims import FAILED
from ._claims import STATE_ATTR
from ._claims import Claim
from ._claims import State
from ._claims import check_current
from ._claims import check_switch
from ._claims import disable
from ._claims import holds_other_tenant
from ._claims import orphan
from ._claims import owned as owned_by_session
from ._claims import same
from ._claims import watch_sharing_pool
from ._events import remove as remove_listener
from ._guard import ensure_guard
from ._info import info_property
from ._keys import CLAIM
from ._keys import CLAIM_OPTION
from ._keys import OUTLIVES_OPTION
from ._keys import TEMP_OWNER
from ._keys import TEMP_PENDING
from ._recycle import TenantLimit
from ._roles import TenantRoles
from .exc import FAIL_CLOSED
from .exc import SchemaRequired
from .exc import SchemaSwitchError
from .exc import TenancyError
from .names import NamePolicy
from .names import NameRule
from .strategies import Strategy

__all__ = ["Installation", "install", "uninstall"]


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
    max_tenants_per_connection: int | None = None
    _listeners: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)
    _check: Callable[[Session, Mapping[Any, Any] | None, object], None] = field(
        init=False, repr=False
    )
    _limit: TenantLimit | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._check = self._check_switch  # one object: the info property compares it

    # -- listeners ---------------------------------------------------------------------------

    def _after_begin(
        self, session: Session, transaction: SessionTransaction, connection: Connection
    ) -> None:
        if transaction.nested:
            return  # a savepoint runs on the connection its transaction already set up
        state: State | None = session.__dict__.get(STATE_ATTR)
        if state is None:
            state = session.__dict__[STATE_ATTR] = State(session)
        info = session.__dict__.get("info")  # what session.info holds, without the property
        raw = None if info is None else info.get(self.info_key)
        home: dict[str, Any] = connection.connection.info
        claim: Claim | None = home.get(CLAIM)
        others = claim.others(state) if claim is not None else []
        first = state.transaction is not transaction  # else: another bind of this transaction
        try:
            schema = self._schema_for(raw)
            if not first and not same(schema, state.schema):
                raise SchemaSwitchError(
                    f"session.info[{self.info_key!r}] is {schema!r} but this transaction "
                    f"already serves {state.schema!r}; do not change the tenant mid-transaction"
                )
            if first and holds_other_tenant(session, state, schema):
                raise SchemaSwitchError(
                    f"the session's tenant changed from {state.loaded!r} to {schema!r} while its "
                    f"identity map holds {len(session.identity_map)} object(s) loaded for "
                    f"{state.loaded!r}; call session.close() or session.expunge_all() first "
                    "(better: one session per tenant)"
                )
            if others and claim is not None and not same(schema, claim.schema):
                raise SchemaSwitchError(
                    f"this database connection already serves tenant {claim.schema!r} for "
                    f"another open session; a session for {schema!r} cannot use it at the same "
                    "time. Bind each session to the engine (its own connection), or end the "
                    "other session first."
                )
        except TenancyError as error:
            self._refuse(state, transaction, raw, connection, others, error)
            raise
        if first:
            state.transaction, state.raw, state.held = transaction, raw, []
        # Marked failed until the strategy returns: an exception leaves it so.
        state.schema = FAILED
        owned = owned_by_session(transaction, connection)
        if not others:
            claim = home[CLAIM] = Claim(schema, home)
            watch_sharing_pool(connection.engine.pool)
            if not owned:
                claim.scope = connection.get_nested_transaction() or connection.get_transaction()
        assert claim is not None
        claim.holders.append(state.ref)
        state.held.append((connection, claim, owned))
        if not owned:
            connection.execution_options(**{OUTLIVES_OPTION: True, CLAIM_OPTION: claim})
            ensure_guard(connection.engine)
        try:
            self.strategy.apply(connection, schema)
        except BaseException as error:
            # Unless the strategy says its failure left the connection unable to reach the
            # default schema (a search_path that names no schema), a Core statement on it must
            # not run untenanted.
            if not getattr(error, FAIL_CLOSED, False):
                disable(connection, others, str(error))
            raise
        state.schema = state.loaded = schema
        if self._limit is not None and schema is not None:
            self._limit.served(connection, schema)

    def _refuse(
        self,
        state: State,
        transaction: SessionTransaction,
        raw: object,
        connection: Connection,
        others: list[State],
        error: BaseException,
    ) -> None:
        if state.transaction is not transaction:
            state.transaction, state.raw, state.held = transaction, raw, []
        state.schema = FAILED
        disable(connection, others, str(error))

    def _after_commit(self, session: Session) -> None:
        state: State | None = session.__dict__.get(STATE_ATTR)
        if state is None or state.transaction is None:
            return
        for _, claim, owned in state.held:
            pending = claim.home.pop(TEMP_PENDING, None)
            if pending is not None:
                # Committed: the connection's temporary objects are now this tenant's only. A
                # commit of a session that joined an outer transaction proves nothing.
                if owned:
                    claim.home[TEMP_OWNER] = pending
                else:
                    claim.home.pop(TEMP_OWNER, None)

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.nested:
            return
        state: State | None = session.__dict__.get(STATE_ATTR)
        if state is None or state.transaction is not transaction:
            return
        held, state.held, state.transaction = state.held, [], None
        for connection, claim, owned in held:
            if state.ref in claim.holders:
                claim.holders.remove(state.ref)
            others = claim.others(state)
            if not others:
                claim.home.pop(TEMP_PENDING, None)  # not committed: the old objects are back
                if claim.home.get(CLAIM) is claim:
                    del claim.home[CLAIM]
            elif connection.closed:
                # This session's own Connection went back to the pool, which rolled the shared
                # DBAPI connection back (StaticPool): the others' transaction, and their tenant,
                # are gone with it.
                orphan(
                    others,
                    claim,
                    "another session sharing this database connection "
                    "ended, and the pool rolled the connection back",
                )
            if connection.closed or any(c is connection for o in others for c, _, _ in o.held):
                continue
            if not owned:
                connection.execution_options(**{CLAIM_OPTION: None})
            self._give_back(connection)

    def _give_back(self, connection: Connection) -> None:
        """Restore a Connection that outlives the session's transaction."""
        if connection.invalidated:
            return
        try:
            self.strategy.apply(connection, None)
        except Exception as error:
            connection.invalidate()
            raise TenancyError(
                f"could not restore the connection after a tenant session ({error}); it was "
                "invalidated. Roll back the outer transaction."
            ) from error

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

    def _check_switch(self, session: Session, info: Mapping[Any, Any] | None, new: object) -> None:
        check_switch(session, info, new, self.info_key)

    def _do_orm_execute(self, orm_execute_state: ORMExecuteState) -> None:
        check_current(orm_execute_state.session, self.info_key)

    def _before_flush(self, session: Session, flush_context: Any, instances: Any) -> None:
        check_current(session, self.info_key)

    # -- life cycle --------------------------------------------------------------------------

    def _register(self) -> None:
        self._listeners = {
            "after_begin": self._after_begin,
            "after_commit": self._after_commit,
            "after_transaction_end": self._after_transaction_end,
            "do_orm_execute": self._do_orm_execute,
            "before_flush": self._before_flush,
        }
        for name, fn in self._listeners.items():
            # insert=True: sa_tenancy's after_begin runs before any other listener of the
            # class (one registered earlier, or on a base class such as Session), so no
            # listener's statement runs before the tenant is applied.
            event.listen(self.session_class, name, fn, insert=True)
        setattr(self.session_class, _targets.INSTALLATION_ATTR, self)
        self.session_class.info = info_property(self.info_key, self._check)  # type: ignore[assignment]

    def uninstall(self) -> None:
        """Remove the listeners and undo any change made to the target. Idempotent."""
        if self.session_class.__dict__.get(_targets.INSTALLATION_ATTR) is not self:
            return
        for name, fn in self._listeners.items():
            remove_listener(self.session_class, name, fn)
        delattr(self.session_class, _targets.INSTALLATION_ATTR)
        if isinstance(self.session_class.__dict__.get("info"), property):
            del self.session_class.info
        if self._limit is not None:
            self._limit.remove()
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
    max_tenants_per_connection: int | None = None,
    tenant_roles: bool | TenantRoles = False,
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
    :param require: refuse (:class:`~sa_tenancy.SchemaRequired`) a transaction without a tenant.
    :param names: which names are tenants: a regular expression, an allowlist, a predicate or a
        :class:`~sa_tenancy.NamePolicy`. Default: ``[a-z_][a-z0-9_]*``.
    :param extra_schemas: ``search_path`` only: schemas searched after the tenant, e.g.
        ``["public"]`` for extension types.
    :param allow_raw_sql: ``translate_map`` only: let ``text()`` SQL run untranslated in tenant
        transactions instead of refusing it.
    :param max_tenants_per_connection: replace a pooled connection (closed at check-in,
        reconnected at its next checkout; never in the middle of a transaction) once it has
        served this many distinct tenants, so that each server backend's catalog cache, which
        grows with every tenant's tables it touches, stays bounded. ``None`` (the default): no
        limit. See the benchmarks README for the memory and latency at 10 to 10,000 tenants.
    :param tenant_roles: run each transaction as the tenant's role (see ``TenantRoles``).
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
    resolved = resolve_strategy(strategy, extra_schemas=tuple(extra_schemas),
                                allow_raw_sql=allow_raw_sql, tenant_roles=tenant_roles)  # fmt: skip
    policy = names if isinstance(names, NamePolicy) else NamePolicy(names)
    limit = None if max_tenants_per_connection is None else TenantLimit(max_tenants_per_connection)
    session_class, restore = _targets.resolve(target)  # last: it may change the target
    installation = Installation(
        target=target,
        session_class=session_class,
        strategy=resolved,
        info_key=info_key,
        require=require,
        names=policy,
        _restore=restore,
        max_tenants_per_connection=max_tenants_per_connection,
        _limit=limit,
    )
    installation._register()
    return installation


def uninstall(target: object) -> bool:
    """Undo :func:`install` on ``target``. Returns whether an installation was removed."""
    installation = installation_of(target)
    if installation is not None:
        installation.uninstall()
    return installation is not None


def installation_of(target: object) -> Installation | None:
    """The active :class:`Installation` for ``target``, if any (without changing anything)."""
    cls = _targets.installed_class(target)
    if cls is None:
        return None
    found = cls.__dict__.get(_targets.INSTALLATION_ATTR)
    return found if isinstance(found, Installation) else None
