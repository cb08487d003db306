"""The public API is exactly ``sa_tenancy.__all__`` (httpx's test_exported_members)."""

from __future__ import annotations
import __future__

import inspect
import subprocess
import sys

import sa_tenancy


def test_all_lists_exactly_the_public_names():
    public = {
        name
        for name in dir(sa_tenancy)
        if not name.startswith("_")
        and not inspect.ismodule(getattr(sa_tenancy, name))
        and not isinstance(getattr(sa_tenancy, name), __future__._Feature)
    }
    assert set(sa_tenancy.__all__) == public
    assert sa_tenancy.__all__ == sorted(sa_tenancy.__all__)


def test_public_classes_show_the_public_path():
    for name in sa_tenancy.__all__:
        member = getattr(sa_tenancy, name)
        if isinstance(member, type):
            assert member.__module__ == "sa_tenancy", name


def test_import_has_no_side_effects():
    # Importing must not import optional integrations, asyncio support (greenlet) or pytest.
    code = (
        "import sys, sa_tenancy; "
        "bad = [m for m in ('sqlalchemy.ext.asyncio', 'pytest', 'alembic', 'fastapi', 'flask',"
        " 'django', 'sa_tenancy.integrations') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_contract_names_and_exception_bases():
    for name in (
        "install",
        "uninstall",
        "TenancyError",
        "InvalidSchemaName",
        "UnknownSchema",
        "SchemaRequired",
        "SchemaSwitchError",
        "Strategy",
        "create_tenant",
        "drop_tenant",
        "list_tenants",
        "tenant_exists",
    ):
        assert name in sa_tenancy.__all__
    assert issubclass(sa_tenancy.InvalidSchemaName, ValueError)
    assert issubclass(sa_tenancy.UnknownSchema, LookupError)
    for exc in (
        sa_tenancy.InvalidSchemaName,
        sa_tenancy.UnknownSchema,
        sa_tenancy.SchemaRequired,
        sa_tenancy.SchemaSwitchError,
        sa_tenancy.RawSQLRefused,
    ):
        assert issubclass(exc, sa_tenancy.TenancyError)
