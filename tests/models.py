"""Models shared by the tests: tenant tables (no schema), and a metadata of every kind of object."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ARRAY
from sqlalchemy import BigInteger
from sqlalchemy import Column
from sqlalchemy import Computed
from sqlalchemy import Enum
from sqlalchemy import ForeignKey
from sqlalchemy import Identity
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import Sequence
from sqlalchemy import SmallInteger
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import UniqueConstraint
from sqlalchemy import text
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship


class Base(DeclarativeBase):
    metadata = MetaData()


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(100))


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    books: Mapped[list[Book]] = relationship(back_populates="author", cascade="all, delete-orphan")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


tenant_metadata = Base.metadata


def rich_metadata(*, with_options: bool = False, extra_tables: int = 0) -> MetaData:
    """Every kind of object a clone copies, for the lifecycle, clone and statement-shape tests.

    Serials of three sizes, an identity column, an enum, a computed column, a server default
    with ``%``, unique and foreign keys, an expression index, and ``extra_tables`` plain tables.
    ``with_options`` adds what only the catalog-to-catalog clone test needs: identity options,
    an array of the enum, a collation, and a column-owned sequence with a custom increment
    (cloned with ``OWNED BY``, which Citus refuses: kept out of the statement-shape test).
    """
    meta = MetaData()
    mood = Enum("happy", "sad", name="mood")
    owners: list[Column[Any]] = [
        Column("id", Integer, primary_key=True),
        Column("name", String(50), nullable=False, unique=True),
        Column("mood", mood, server_default="happy"),
        *([Column("moods", ARRAY(mood))] if with_options else []),
        Column("doubled", Integer, Computed("id * 2", persisted=True)),
        Column(
            "note", String(20, collation="C" if with_options else None), server_default="100% sure"
        ),
    ]
    Table("owners", meta, *owners)
    identity = Identity(start=10, increment=5) if with_options else Identity()
    pets = Table(
        "pets", meta,
        Column("id", Integer, identity, primary_key=True),
        Column("owner_id", ForeignKey("owners.id", ondelete="CASCADE"), nullable=False),
        Column("name", String(50)),
        *([Column("ticket", Integer, Sequence("tickets", increment=3))] if with_options else []),
        UniqueConstraint("owner_id", "name", name="uq_pet_name"),
    )  # fmt: skip
    Index("ix_pets_lower_name", text("lower(name)"), _table=pets)
    Table("big", meta, Column("id", BigInteger, primary_key=True), Column("v", String))
    Table("small", meta, Column("id", SmallInteger, primary_key=True), Column("v", String))
    for i in range(extra_tables):
        Table(f"extra_{i}", meta, Column("id", Integer, primary_key=True), Column("v", String))
    return meta
