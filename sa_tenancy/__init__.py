"""Schema-per-tenant for SQLAlchemy: one engine, one session factory, the tenant as session state.

Example::

    import sa_tenancy
    SessionLocal = sessionmaker(engine)
    sa_tenancy.install(SessionLocal, strategy="search_path", require=True)
    with SessionLocal(info={"schema": "acme"}) as session:
        ...

Importing this package does nothing but define names: no settings read, no listener
registered, no optional integration imported.
"""

from __future__ import annotations

from .exc import InvalidSchemaName
from .exc import RawSQLRefused
from .exc import SchemaRequired
from .exc import SchemaSwitchError
from .exc import TenancyError
from .exc import UnknownSchema
from .lifecycle import create_tenant
from .lifecycle import drop_tenant
from .lifecycle import list_tenants
from .lifecycle import tenant_exists
from .listener import Installation
from .listener import install
from .listener import installation_of
from .listener import uninstall
from .names import NamePolicy
from .sqlite import SQLiteFiles
from .strategies import ALLOW_RAW_SQL
from .strategies import SearchPath
from .strategies import Strategy
from .strategies import TranslateMap
from .verify import LeakDetector
from .verify import PoolLeak
from .verify import verify_checkin

__all__ = [
    "ALLOW_RAW_SQL",
    "Installation",
    "InvalidSchemaName",
    "LeakDetector",
    "NamePolicy",
    "PoolLeak",
    "RawSQLRefused",
    "SQLiteFiles",
    "SchemaRequired",
    "SchemaSwitchError",
    "SearchPath",
    "Strategy",
    "TenancyError",
    "TranslateMap",
    "UnknownSchema",
    "create_tenant",
    "drop_tenant",
    "install",
    "installation_of",
    "list_tenants",
    "tenant_exists",
    "uninstall",
    "verify_checkin",
]

__version__ = "0.1.0"
