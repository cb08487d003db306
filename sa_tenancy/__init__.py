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

from ._adopt import adopt_schema
from ._role_sync import sync_tenant_roles
from ._roles import TenantRoles
from ._roles import tenant_role
from .citus import create_shared_tables
from .citus import move_tenant
from .citus import tenant_placement
from .exc import CitusRequired
from .exc import InvalidSchemaName
from .exc import RawSQLRefused
from .exc import ReservoirEmpty
from .exc import SchemaRequired
from .exc import SchemaSwitchError
from .exc import TenancyError
from .exc import TenantRoleMissing
from .exc import UnknownSchema
from .lifecycle import clone_tenant
from .lifecycle import create_tenant
from .lifecycle import drop_tenant
from .lifecycle import list_tenants
from .lifecycle import rename_tenant
from .lifecycle import tenant_exists
from .listener import Installation
from .listener import install
from .listener import installation_of
from .listener import uninstall
from .migrate import FleetReport
from .migrate import StatusReport
from .migrate import TenantResult
from .migrate import migrate_tenants
from .migrate import tenant_status
from .names import NamePolicy
from .reservoir import claim_tenant
from .reservoir import fill_reservoir
from .reservoir import reservoir_size
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
    "CitusRequired",
    "FleetReport",
    "Installation",
    "InvalidSchemaName",
    "LeakDetector",
    "NamePolicy",
    "PoolLeak",
    "RawSQLRefused",
    "ReservoirEmpty",
    "SQLiteFiles",
    "SchemaRequired",
    "SchemaSwitchError",
    "SearchPath",
    "StatusReport",
    "Strategy",
    "TenancyError",
    "TenantResult",
    "TenantRoleMissing",
    "TenantRoles",
    "TranslateMap",
    "UnknownSchema",
    "adopt_schema",
    "claim_tenant",
    "clone_tenant",
    "create_shared_tables",
    "create_tenant",
    "drop_tenant",
    "fill_reservoir",
    "install",
    "installation_of",
    "list_tenants",
    "migrate_tenants",
    "move_tenant",
    "rename_tenant",
    "reservoir_size",
    "sync_tenant_roles",
    "tenant_exists",
    "tenant_placement",
    "tenant_role",
    "tenant_status",
    "uninstall",
    "verify_checkin",
]

__version__ = "0.1.0"
