"""A clone is its template, catalog entry for catalog entry (sa_tenancy/_clone.py).

The copy writes a column's own sequence as ``serial``/``bigserial``/``smallserial`` instead of
a separate sequence and ``ALTER SEQUENCE ... OWNED BY`` (which Citus refuses), so this compares
what the catalogs say about both schemas, with the schema names taken out: columns (type,
default, ``NOT NULL``, identity, generated, collation), constraints, indexes, sequences (type,
options, owning column, position) and enum types.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

import sa_tenancy
from sa_tenancy.testing import unique_name

from .models import rich_metadata

_COLUMNS = """
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated, co.collname
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE c.relnamespace = to_regnamespace(:s) AND c.relkind = 'r' ORDER BY 1, 2
"""
_CONSTRAINTS = """
SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
WHERE c.relnamespace = to_regnamespace(:s) ORDER BY 1, 2
"""
_INDEXES = """
SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = :s ORDER BY 1, 2
"""
_SEQUENCES = """
SELECT s.sequencename, s.data_type::text, s.start_value, s.min_value, s.max_value,
       s.increment_by, s.cycle, s.cache_size, s.last_value,
       (SELECT ot.relname || '.' || a.attname || ':' || CAST(d.deptype AS text)
        FROM pg_depend d JOIN pg_class ot ON ot.oid = d.refobjid
        JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE d.objid = CAST(format('%I.%I', s.schemaname, s.sequencename) AS regclass)
          AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.deptype IN ('a', 'i'))
FROM pg_sequences s WHERE s.schemaname = :s ORDER BY 1
"""
_ENUMS = """
SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
WHERE t.typnamespace = to_regnamespace(:s) GROUP BY 1 ORDER BY 1
"""


def catalog_of(engine: Engine, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """What the catalogs say about ``schema``, with its own name replaced by ``<schema>``."""

    def plain(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(f'"{schema}".', "<schema>.").replace(f"{schema}.", "<schema>.")
        if isinstance(value, list):
            return tuple(plain(v) for v in value)
        return value

    out = {}
    with engine.connect() as conn:
        queries = {"columns": _COLUMNS, "constraints": _CONSTRAINTS, "indexes": _INDEXES,
                   "sequences": _SEQUENCES, "enums": _ENUMS}  # fmt: skip
        for key, sql in queries.items():
            rows = conn.execute(text(sql), {"s": schema}).all()
            out[key] = [tuple(plain(v) for v in row) for row in rows]
    return out


@pytest.fixture
def template(pg_engine: Engine):
    made: list[str] = []
    schema = unique_name("tpl")
    sa_tenancy.create_tenant(pg_engine, schema, metadata=rich_metadata(with_options=True))
    made.append(schema)
    with pg_engine.begin() as conn:
        q = f'"{schema}"'
        conn.exec_driver_sql(
            f"INSERT INTO {q}.owners (name, mood, moods) VALUES ('a', 'sad', '{{happy,sad}}'), "
            "('b', 'happy', NULL)"
        )
        conn.exec_driver_sql(f"INSERT INTO {q}.pets (owner_id, name) VALUES (1, 'x'), (2, 'y')")
        conn.exec_driver_sql(f"INSERT INTO {q}.big (v) VALUES ('a'), ('b'), ('c')")
        conn.exec_driver_sql(f"INSERT INTO {q}.small (v) VALUES ('a')")
        # A column-owned sequence with options serial would not give it: the OWNED BY path.
        conn.exec_driver_sql(f"CREATE SEQUENCE {q}.odd INCREMENT 7 START 3")
        conn.exec_driver_sql(
            f"CREATE TABLE {q}.odd_rows (n integer NOT NULL DEFAULT nextval('{schema}.odd'))"
        )
        conn.exec_driver_sql(f"ALTER SEQUENCE {q}.odd OWNED BY {q}.odd_rows.n")
        conn.exec_driver_sql(f"INSERT INTO {q}.odd_rows DEFAULT VALUES")
    yield schema, made
    for name in made:
        sa_tenancy.drop_tenant(pg_engine, name)


@pytest.mark.parametrize("data", [True, False])
def test_a_clone_matches_its_template_catalog_to_catalog(pg_engine, template, data):
    source, made = template
    copy = unique_name("copy")
    sa_tenancy.clone_tenant(pg_engine, source, copy, data=data)
    made.append(copy)
    want, got = catalog_of(pg_engine, source), catalog_of(pg_engine, copy)
    for key in ("columns", "constraints", "indexes", "enums"):
        assert got[key] == want[key], key
    if data:
        assert got["sequences"] == want["sequences"]  # positions too
    else:
        # Same sequences, options and owners; a copy without rows starts from the beginning.
        assert [r[:8] + r[9:] for r in got["sequences"]] == [
            r[:8] + r[9:] for r in want["sequences"]
        ]
        assert {r[0]: r[8] for r in got["sequences"]} == {r[0]: None for r in want["sequences"]}
    # The serial-shaped sequences really belong to their columns (the catalog says so, above),
    # and new rows in the copy do not collide with copied ones.
    with pg_engine.begin() as conn:
        q = f'"{copy}"'
        big = conn.exec_driver_sql(f"INSERT INTO {q}.big (v) VALUES ('d') RETURNING id").scalar()
        pet = conn.exec_driver_sql(
            f"INSERT INTO {q}.owners (name) VALUES ('c') RETURNING id"
        ).scalar()
        moods = conn.exec_driver_sql(f"SELECT moods FROM {q}.owners ORDER BY id").scalars().all()
    assert big == (4 if data else 1)
    assert pet == (3 if data else 1)
    assert moods[: (3 if data else 1)] == (["{happy,sad}", None, None] if data else [None])
