"""Rows for the isolation conformance check, built from the models' column types alone.

:func:`~sa_tenancy.conformance.check_isolation` writes row 1 of every model into two tenants,
with **identical keys** (so a read or write that reaches the wrong schema shows up instead of
passing by luck) and the tenant's name in a marker column (so every finding can say whose row
leaked). Choosing those values is a concern of its own: any column type, under any
``TypeDecorator`` (SQLModel's ``AutoString``), foreign keys pointing at row 1 of their parent,
parents written before children. The ``sa_tenancy.testing`` plugin uses the same values for its
decoy rows in ``public``, so a tenant write that falls through there collides.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Enum
from sqlalchemy import TypeDecorator
from sqlalchemy import Uuid
from sqlalchemy import inspect

from ._conformance_report import ConformanceReport
from .exc import TenancyError

#: Builds one row object of ``model`` for ``tenant``: ``make_row(model, tenant) -> instance``.
RowMaker = Callable[[type[Any], str], Any]


@dataclass
class _Model:
    cls: type[Any]
    table: str
    marker: str  # the string column that carries the tenant's name


def _base_type(column: Any) -> Any:
    """The column's type, under any ``TypeDecorator`` (whose ``python_type`` is ``object``
    unless it says otherwise: SQLModel's ``AutoString`` wraps ``String`` that way)."""
    type_ = column.type
    while isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    return type_


def _python_type(column: Any) -> Any:
    for type_ in (column.type, _base_type(column)):
        try:
            python_type = type_.python_type
        except NotImplementedError:
            continue
        if python_type is not object:
            return python_type
    return None


def _marker_column(model: type[Any]) -> str | None:
    """The first column that can carry a tenant name: a string type that is no key and no enum.

    ``python_type``, not ``isinstance(String)``: SQLModel's ``AutoString`` and other
    ``TypeDecorator`` string types are strings too.
    """
    mapper = inspect(model)
    for column in mapper.columns:
        if column.primary_key or column.foreign_keys or isinstance(_base_type(column), Enum):
            continue
        if _python_type(column) is str:
            return str(column.key)
    return None


_SAMPLES: dict[type, Any] = {
    int: 1,
    bool: False,
    float: 0.0,
    decimal.Decimal: decimal.Decimal(0),
    str: "x",
    bytes: b"",
    datetime.datetime: datetime.datetime(2000, 1, 1),
    datetime.date: datetime.date(2000, 1, 1),
    datetime.time: datetime.time(0, 0),
    uuid.UUID: uuid.UUID(int=1),
    dict: {},
    list: [],
}

_KEYS: dict[type, Any] = {
    int: 1,
    str: "1",
    uuid.UUID: uuid.UUID(int=1),
    bytes: b"1",
    decimal.Decimal: decimal.Decimal(1),
    float: 1.0,
}


def _value_for(column: Any) -> Any:
    """A harmless value for a required column that is neither key nor marker."""
    if isinstance(_base_type(column), Uuid):
        return _uuid_value(column, 1)
    return _SAMPLES.get(_python_type(column))


def _uuid_value(column: Any, n: int) -> Any:
    value = uuid.UUID(int=n)
    return value if getattr(_base_type(column), "as_uuid", True) else str(value)


def _key_for(column: Any) -> Any:
    """Row 1's value for a primary or foreign key column, by type: the same in every tenant.

    A foreign key takes the type of the column it references, so it points at row 1 there.
    """
    for fk in column.foreign_keys:
        try:
            return _key_for(fk.column)
        except Exception:  # an unresolvable reference: fall back to the column's own type
            break
    if isinstance(_base_type(column), Uuid):
        return _uuid_value(column, 1)
    python_type = _python_type(column)
    if python_type in _KEYS:
        return _KEYS[python_type]
    return _SAMPLES.get(python_type, 1)


def _mark(column: Any, tenant: str) -> str:
    length = getattr(_base_type(column), "length", None)
    return tenant[:length] if length else tenant


def default_row(model: type[Any], tenant: str) -> Any:
    """Row 1 of ``model`` for ``tenant``: every primary and foreign key set to row 1's value for
    its type (``1``, ``"1"``, ``UUID(int=1)``, ...), the marker column set to the tenant name,
    other required columns a neutral value."""
    mapper = inspect(model)
    marker = _marker_column(model)
    values: dict[str, Any] = {}
    for column in mapper.columns:
        key = str(column.key)
        if column.primary_key or column.foreign_keys:
            values[key] = _key_for(column)
        elif key == marker:
            values[key] = _mark(column, tenant)
        elif not column.nullable and column.default is None and column.server_default is None:
            values[key] = _value_for(column)
    return model(**values)


def _models(models: Sequence[type[Any]], report: ConformanceReport) -> list[_Model]:
    found = []
    for model in models:
        marker = _marker_column(model)
        table = inspect(model).local_table
        if marker is None:
            report.notes.append(f"{table.name}: no string column to mark rows with; not checked")
            continue
        if table.schema is not None:
            report.notes.append(f"{table.name}: shared table (schema {table.schema}); skipped")
            continue
        found.append(_Model(model, str(table.name), marker))
    if not found:
        raise TenancyError("check_isolation needs at least one tenant model with a string column")
    # Parents first, so foreign keys to row 1 resolve.
    order = {
        t.name: n for n, t in enumerate(inspect(found[0].cls).local_table.metadata.sorted_tables)
    }
    return sorted(found, key=lambda m: order.get(m.table, 0))
