"""The stress and fault run at CI size: ``python -m benchmarks stress`` (see benchmarks/stress.py).

Runs the suite as a user would, in a subprocess against a throwaway cluster it starts itself
(the run restarts that server half-way), and checks its JSON verdict: 0 cross-tenant reads,
0 lost writes, 0 misplaced writes, 0 writes in ``public``, with every fault kind injected.
``SA_TENANCY_STRESS_OPS`` sets the size (default 25,000 per test run; CI runs the suite on two
SQLAlchemy versions, so 50,000 operations per CI run). A negative control runs the same
workload with a broken strategy and must fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sa_tenancy._cluster import find_pg_bin

ROOT = Path(__file__).resolve().parent.parent
OPS = int(os.environ.get("SA_TENANCY_STRESS_OPS", "25000"))

# A PostgreSQL test (deselected with -m "not pg") on a server of its own (-m "not own_server").
pytestmark = [pytest.mark.pg, pytest.mark.own_server]


@pytest.fixture(autouse=True)
def _needs_initdb():
    if find_pg_bin() is None:
        message = "the stress run starts its own PostgreSQL: install postgresql (initdb, pg_ctl)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true: it must not be skipped")
        pytest.skip(message)


def _stress(tmp_path: Path, *args: str, timeout: float) -> tuple[int, dict, str]:
    out = tmp_path / "stress.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "stress", "--json", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    result = json.loads(out.read_text())["results"] if out.exists() else {}
    return proc.returncode, result, proc.stdout + proc.stderr


def test_stress_and_faults_keep_tenants_apart(tmp_path):
    code, result, output = _stress(tmp_path, "--ops", str(OPS), timeout=600)
    print("\n" + output)
    assert result, output[-3000:]
    assert result["ops"] == OPS
    assert result["threads"] == 32 and result["tasks"] == 200 and result["tenants"] == 200
    # Every fault kind happened, so the zeros below were earned under faults.
    assert result["faults"]["backend_terminated"] > 0
    assert result["faults"]["server_restart"] == 1
    assert result["faults"]["statement_timeout"] > 0
    assert result["retries"] > 0
    for kind in ("get", "select", "insert", "update", "delete", "savepoint", "rollback"):
        assert result["ops_by_kind"][kind] > 0, kind
    assert result["ops_by_kind"]["db_error"] > 0
    assert result["cross_tenant_reads"] == 0
    assert result["stale_reads"] == 0
    assert result["lost_writes"] == 0
    assert result["misplaced_writes"] == 0
    assert result["public_writes"] == 0
    assert result["unexpected_errors"] == 0, result["examples"]
    assert code == 0, output[-3000:]


def test_negative_control_is_caught(tmp_path):
    """The same run with the tenant bound to the pooled connection (a common bug) fails."""
    code, result, output = _stress(
        tmp_path, "--control", "--ops", "2000", "--tenants", "20", timeout=300
    )
    assert code == 1, output[-3000:]
    assert result["cross_tenant_reads"] > 0
    assert result["misplaced_writes"] > 0
    assert "FAIL" in output
