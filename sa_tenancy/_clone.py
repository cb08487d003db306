"""Copy the structure of one schema into another, server-side, in one transaction.

``CREATE TABLE ... (LIKE src.t INCLUDING ALL)`` is not enough for a tenant: defaults keep calling
the *source* schema's sequences and enum columns keep the *source* schema's types. Instead the
DDL is generated from the catalog while ``search_path`` is the source schema, so PostgreSQL's
deparsers (``format_type``, ``pg_get_expr``, ``pg_get_constraintdef``) print the source's own
objects unqualified, and is then executed with ``search_path`` set to the target, where those
unqualified names resolve to the target's copies. Index definitions are the one deparser that
always qualifies the table; its ``ON src.t`` is rewritten.

Copied: enum types, sequences, tables with column types, collations, defaults, identity and
generated columns, ``NOT NULL``, primary/unique/check/exclusion and foreign-key constraints,
other indexes, and the rows of ``alembic_version`` (optionally all rows). Not copied: views,
functions, triggers, policies, grants other than the defaults.

Written so that it also runs on Citus, where the target is a distributed schema:

* one statement per message (Citus refuses DDL inside a multi-statement message);
* a column's own sequence (``serial``: a sequence owned by the column, with the options
  ``serial`` gives it, named as ``serial`` names it) is written as ``smallserial``/``serial``/
  ``bigserial`` in the ``CREATE TABLE``, never as a separate sequence plus ``ALTER SEQUENCE ...
  OWNED BY`` (Citus: "Altering a distributed sequence is currently not supported"). Only a
  column-owned sequence with other options or another name still takes the ``OWNED BY`` path,
  which works on plain PostgreSQL only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ._ledger import execute_ddl
from ._ledger import ident

VERSION_TABLE = "alembic_version"

_ENUMS = """
SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
WHERE t.typnamespace = to_regnamespace(quote_ident(:src)) GROUP BY t.typname ORDER BY t.typname
"""

_SEQUENCES = """
SELECT c.relname, format_type(s.seqtypid, NULL), s.seqincrement, s.seqmin, s.seqmax,
       s.seqstart, s.seqcache, s.seqcycle, ot.relname, a.attname
FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid
LEFT JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass
     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class ot ON ot.oid = d.refobjid
LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE c.relnamespace = to_regnamespace(quote_ident(:src)) AND c.relkind = 'S'
  AND (d.deptype IS NULL OR d.deptype = 'a')
ORDER BY c.relname
"""

_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation THEN co.collname END,
       ids.relname, ids.seqstart, ids.seqincrement, ids.seqmin, ids.seqmax, ids.seqcache,
       ids.seqcycle
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
     AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
LEFT JOIN LATERAL (
    SELECT sc.relname, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle
    FROM pg_depend d JOIN pg_sequence s ON s.seqrelid = d.objid
    JOIN pg_class sc ON sc.oid = d.objid
    WHERE a.attidentity <> '' AND d.refobjid = c.oid AND d.refobjsubid = a.attnum
      AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.deptype = 'i'
) AS ids ON true
WHERE c.relnamespace = to_regnamespace(quote_ident(:src)) AND c.relkind = 'r'
ORDER BY c.relname, a.attnum
"""

_CONSTRAINTS = """
SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
WHERE c.relnamespace = to_regnamespace(quote_ident(:src)) AND c.relkind = 'r'
  AND k.contype IN ('p', 'u', 'c', 'x', 'f')
ORDER BY k.contype = 'f', c.relname, k.conname
"""

_INDEXES = """
SELECT c.relname, pg_get_indexdef(i.indexrelid), format('%I.%I', CAST(:src AS text), c.relname)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
WHERE c.relnamespace = to_regnamespace(quote_ident(:src)) AND c.relkind = 'r'
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                  AND k.conrelid = i.indrelid)
ORDER BY c.relname, i.indexrelid
"""


def clone_structure(conn: Connection, source: str, target: str, *, data: bool) -> None:
    """Create the objects of schema ``source`` in the existing, empty schema ``target``.

    Both names are validated by the caller. Runs in the caller's transaction and leaves its
    ``search_path`` as it found it (both changes are transaction-scoped ``set_config`` calls).
    """
    q = ident
    saved = conn.execute(text("SELECT current_setting('search_path')")).scalar()
    conn.execute(text("SELECT set_config('search_path', :p, true)"), {"p": q(source)})
    params = {"src": source}
    enums = conn.execute(text(_ENUMS), params).all()
    sequences = conn.execute(text(_SEQUENCES), params).all()
    columns = conn.execute(text(_COLUMNS), params).all()
    constraints = conn.execute(text(_CONSTRAINTS), params).all()
    indexes = conn.execute(text(_INDEXES), params).all()

    serials = _serial_columns(sequences, columns)
    ddl: list[str] = []
    for name, labels in enums:
        values = ", ".join(_literal(label) for label in labels)
        ddl.append(f"CREATE TYPE {q(name)} AS ENUM ({values})")
    for name, typ, inc, lo, hi, start, cache, cycle, owner, col in sequences:
        if owner is not None and (owner, col) in serials:
            continue  # made by its column's serial type
        ddl.append(
            f"CREATE SEQUENCE {q(name)} AS {typ} INCREMENT {int(inc)} MINVALUE {int(lo)} "
            f"MAXVALUE {int(hi)} START {int(start)} CACHE {int(cache)} "
            + ("CYCLE" if cycle else "NO CYCLE")
        )
    tables: dict[str, list[str]] = {}
    inserted: dict[str, list[str]] = {}
    selected: dict[str, list[str]] = {}
    enum_names = {name for name, _labels in enums}
    for table, col, typ, notnull, default, identity, generated, collation, *seq in columns:
        if generated != "s":
            # An enum column's rows come as the template's type: cast through text to the copy's.
            own_enum = typ.removesuffix("[]").strip('"') in enum_names
            selected.setdefault(table, []).append(
                f"CAST(CAST({q(col)} AS text) AS {typ})" if own_enum else q(col)
            )
        if (table, col) in serials:
            tables.setdefault(table, []).append(f"{q(col)} {_SERIAL_OF[typ]}")
            inserted.setdefault(table, []).append(q(col))
            continue
        parts = [q(col), typ]
        if collation:
            parts.append(f"COLLATE {q(collation)}")
        if generated == "s":
            parts.append(f"GENERATED ALWAYS AS ({default}) STORED")
        elif identity:
            kind = "ALWAYS" if identity == "a" else "BY DEFAULT"
            parts.append(f"GENERATED {kind} AS IDENTITY{_identity_options(table, col, seq)}")
        elif default is not None:
            parts.append(f"DEFAULT {default}")
        if notnull:
            parts.append("NOT NULL")
        tables.setdefault(table, []).append(" ".join(parts))
        if generated != "s":
            inserted.setdefault(table, []).append(q(col))
    foreign: list[str] = []
    for table, name, kind, definition in constraints:
        if kind == "f":  # after every table (and its rows) exists
            foreign.append(f"ALTER TABLE {q(table)} ADD CONSTRAINT {q(name)} {definition}")
        else:  # inline: one CREATE TABLE instead of a CREATE and an ALTER per constraint
            tables.setdefault(table, []).append(f"CONSTRAINT {q(name)} {definition}")
    for table, cols in tables.items():
        ddl.append(f"CREATE TABLE {q(table)} ({', '.join(cols)})")
    for _name, _typ, _i, _lo, _hi, _s, _c, _cy, owner_table, owner_col in sequences:
        if owner_table is not None and (owner_table, owner_col) not in serials:
            ddl.append(f"ALTER SEQUENCE {q(_name)} OWNED BY {q(owner_table)}.{q(owner_col)}")
    for table, definition, qualified in indexes:
        # pg_get_indexdef always qualifies the table, quoted by quote_ident (only if needed).
        marker = f" ON {qualified} "
        marker_only = f" ON ONLY {qualified} "
        if marker in definition:
            head, _, rest = definition.partition(marker)
            ddl.append(f"{head} ON {q(table)} {rest}")
        elif marker_only in definition:
            head, _, rest = definition.partition(marker_only)
            ddl.append(f"{head} ON ONLY {q(table)} {rest}")
        else:  # pragma: no cover - unqualified already
            ddl.append(definition)
    copied = list(tables) if data else [t for t in tables if t == VERSION_TABLE]
    for table in copied:
        listed = ", ".join(inserted[table])
        ddl.append(
            f"INSERT INTO {q(table)} ({listed}) OVERRIDING SYSTEM VALUE "
            f"SELECT {', '.join(selected[table])} FROM {q(source)}.{q(table)}"
        )
    ddl.extend(foreign)

    conn.execute(text("SELECT set_config('search_path', :p, true)"), {"p": q(target)})
    for statement in ddl:
        execute_ddl(conn, statement)
    if data:
        for name, *_rest in sequences:
            conn.execute(
                text(
                    "SELECT setval(CAST(:dst AS regclass), last_value, is_called) "
                    f"FROM {q(source)}.{q(name)}"
                ),
                {"dst": f"{q(target)}.{q(name)}"},
            )
        _copy_identity_positions(conn, source, target)
    conn.execute(text("SELECT set_config('search_path', :p, true)"), {"p": saved})


def _copy_identity_positions(conn: Connection, source: str, target: str) -> None:
    """Move identity sequences of the copy to where the source's are, so new rows don't collide."""
    rows = conn.execute(
        text(
            "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE c.relnamespace = to_regnamespace(quote_ident(:src)) AND c.relkind = 'r' "
            "AND a.attidentity <> '' AND NOT a.attisdropped"
        ),
        {"src": source},
    ).all()
    q = ident
    for table, column in rows:
        src_seq = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, :c)"),
            {"t": f"{q(source)}.{q(table)}", "c": column},
        ).scalar()
        dst_seq = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, :c)"),
            {"t": f"{q(target)}.{q(table)}", "c": column},
        ).scalar()
        if src_seq and dst_seq:
            conn.execute(
                text(
                    "SELECT setval(CAST(:dst AS regclass), s.last_value, s.is_called) "
                    "FROM pg_sequences p, LATERAL (SELECT COALESCE(p.last_value, p.start_value) "
                    "AS last_value, p.last_value IS NOT NULL AS is_called) s "
                    "WHERE format('%I.%I', p.schemaname, p.sequencename) = :src"
                ),
                {"dst": dst_seq, "src": src_seq},
            )


def _identity_options(table: str, col: str, seq: Sequence[Any]) -> str:
    """The template's identity sequence options (start, increment, bounds, cache, cycle, name)."""
    name, start, inc, lo, hi, cache, cycle = seq
    if name is None:  # pragma: no cover - an identity column always has its sequence
        return ""
    options = (
        f"START {int(start)} INCREMENT {int(inc)} MINVALUE {int(lo)} MAXVALUE {int(hi)} "
        f"CACHE {int(cache)} " + ("CYCLE" if cycle else "NO CYCLE")
    )
    if name != f"{table}_{col}_seq":
        options = f"SEQUENCE NAME {ident(name)} {options}"
    return f" ({options})"


#: The serial type that makes a column's sequence, by the column's type.
_SERIAL_OF = {"smallint": "smallserial", "integer": "serial", "bigint": "bigserial"}
#: The largest value of each sequence type: ``serial``'s sequences end there.
_MAX_OF = {"smallint": 2**15 - 1, "integer": 2**31 - 1, "bigint": 2**63 - 1}


def _serial_columns(sequences: Sequence[Any], columns: Sequence[Any]) -> set[tuple[str, str]]:
    """``(table, column)`` of the columns to write as ``serial``: their sequence comes with them.

    A column qualifies when its sequence is :func:`_serial_shaped`, it is ``NOT NULL`` and its
    default is exactly that sequence's ``nextval`` (as ``serial`` leaves it).
    """
    shaped = {(row[8], row[9]): row[0] for row in sequences if _serial_shaped(tuple(row))}
    found = set()
    for table, col, typ, notnull, default, identity, generated, collation, *_ in columns:
        seq = shaped.get((table, col))
        if seq is None or not notnull or identity or generated or collation:
            continue
        printed = {
            f"nextval({_literal(seq)}::regclass)",
            f"nextval({_literal(ident(seq))}::regclass)",
        }
        if default in printed and _SERIAL_OF.get(typ) is not None:
            found.add((table, col))
    return found


def _serial_shaped(row: tuple[Any, ...]) -> bool:
    """Whether a sequence is exactly what ``serial`` would make for its owning column.

    Same type as a serial type, the options ``CREATE SEQUENCE`` gives by default, and the name
    ``serial`` chooses (``<table>_<column>_seq``, when that fits in 63 bytes), so the copy's
    sequence is named like the template's and positions can be copied by name.
    """
    name, typ, inc, lo, hi, start, cache, cycle, owner, col = row
    if owner is None or typ not in _SERIAL_OF:
        return False
    expected = f"{owner}_{col}_seq"
    return (
        name == expected
        and len(expected.encode("utf-8")) <= 63
        and (inc, lo, hi, start, cache, cycle) == (1, 1, _MAX_OF[str(typ)], 1, 1, False)
    )


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
