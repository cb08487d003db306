"""The ``sa-tenancy`` command, run as a user would: a subprocess with DATABASE_URL set."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import sa_tenancy

from . import _alembic_env
from ._alembic_env import ALEMBIC_SCRIPT
from ._alembic_env import SA_TENANCY_SCRIPT
from ._alembic_env import add_revisions
from ._alembic_env import ledger
from ._alembic_env import make_fleet
from ._alembic_env import migration_counts
from ._alembic_env import run_cli
from ._alembic_env import run_script
from ._alembic_env import use_models
from ._alembic_env import write_env

fleet_url = _alembic_env.fleet_url
fleet_engine = _alembic_env.fleet_engine

SCRIPT = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "sa-tenancy"


def test_console_script_and_module_both_run():
    module = run_cli(["--help"], url=None)
    assert module.returncode == 0 and "migrate" in module.stdout
    if SCRIPT.exists():  # the installed console script (pyproject [project.scripts])
        script = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
        assert script.returncode == 0 and script.stdout == module.stdout


def test_create_list_rename_drop(fleet_url, fleet_engine):
    made = run_cli(["create", "acme", "globex", "--json"], url=fleet_url)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout) == {"created": ["acme", "globex"], "failed": {}}
    listed = run_cli(["list", "--json"], url=fleet_url)
    assert json.loads(listed.stdout) == ["acme", "globex"]
    renamed = run_cli(["rename", "globex", "initech"], url=fleet_url)
    assert renamed.returncode == 0 and "globex -> initech" in renamed.stdout
    assert run_cli(["list"], url=fleet_url).stdout.split() == ["acme", "initech"]
    again = run_cli(["create", "acme", "hooli"], url=fleet_url)
    assert again.returncode == 1
    assert "created hooli" in again.stdout and "FAILED acme: " in again.stdout
    assert "Traceback" not in again.stderr
    dropped = run_cli(["drop", "acme", "nobody", "--yes"], url=fleet_url)
    assert dropped.returncode == 1
    assert "dropped acme" in dropped.stdout and "FAILED nobody: " in dropped.stdout
    assert sa_tenancy.list_tenants(fleet_engine) == ["hooli", "initech"]


def test_clone_and_reservoir_from_the_command_line(fleet_url, fleet_engine, tmp_path):
    ini = write_env(tmp_path, revisions=("r1",))
    made = run_cli(["create", "tpl", "--config", str(ini)], url=fleet_url)
    assert made.returncode == 0, made.stderr
    cloned = run_cli(["create", "copy1", "--clone-from", "tpl"], url=fleet_url)
    assert cloned.returncode == 0, cloned.stderr
    assert ledger(fleet_engine)["copy1"] == "r1"
    filled = run_cli(["reservoir", "--fill", "2", "--clone-from", "tpl", "--json"], url=fleet_url)
    assert json.loads(filled.stdout)["spares"] == 2
    claimed = run_cli(["create", "claimed", "--claim"], url=fleet_url)
    assert claimed.returncode == 0, claimed.stderr
    assert sa_tenancy.list_tenants(fleet_engine) == ["claimed", "copy1", "tpl"]
    assert sa_tenancy.reservoir_size(fleet_engine) == 1


def test_invalid_names_and_bad_usage_exit_2_with_one_line(fleet_url, fleet_engine):
    for args in (
        ["create", "ok_name", "Robert'); DROP TABLE students;--"],
        ["drop", "public", "--yes"],
        ["create", "sa_tenancy"],
    ):
        result = run_cli(args, url=fleet_url)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sa-tenancy: error: "), result.stderr
    assert sa_tenancy.list_tenants(fleet_engine) == []  # validated before anything was sent
    no_yes = run_cli(["drop", "acme"], url=fleet_url)  # stdin is not a terminal
    assert no_yes.returncode == 2 and "--yes" in no_yes.stderr
    no_url = run_cli(["list"], url=None)
    assert no_url.returncode == 2 and "DATABASE_URL" in no_url.stderr
    down = run_cli(["list"], url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert down.returncode == 2 and "cannot connect" in down.stderr
    assert "Traceback" not in down.stderr
    no_config = run_cli(["migrate", "--config", "/nonexistent/alembic.ini"], url=fleet_url)
    assert no_config.returncode == 2 and "no Alembic configuration" in no_config.stderr


def test_migrate_reports_the_failing_tenant_and_exits_1(fleet_url, fleet_engine, tmp_path):
    ini = write_env(tmp_path, revisions=("r1",))
    names = make_fleet(fleet_engine, ini, 10)
    broken = names[3]
    with fleet_engine.begin() as conn:
        conn.exec_driver_sql(f'ALTER TABLE "{broken}".items ADD COLUMN price integer')
    add_revisions(tmp_path, ("r2",))
    result = run_cli(["migrate", "--config", str(ini), "--jobs", "2"], url=fleet_url)
    assert result.returncode == 1, result.stderr
    assert f"FAILED {broken}: DuplicateColumn" in result.stdout
    assert "9 migrated" in result.stdout and "1 failed" in result.stdout
    # Plain output (not a terminal): progress as whole lines, with done/total and rate.
    assert "migrate: 10/10 tenants, 1 failed" in result.stdout
    assert "\r" not in result.stdout
    assert set(migration_counts(fleet_engine)) == set(names) - {broken}
    revisions = ledger(fleet_engine)  # the failed tenant rolled back with its ledger row
    assert revisions[broken] == "r1"
    assert all(revisions[n] == "r2" for n in names if n != broken)
    status = run_cli(["status", "--config", str(ini), "--json"], url=fleet_url)
    assert status.returncode == 1
    report = json.loads(status.stdout)
    assert report["by_revision"] == {"r1": 1, "r2": 9}
    assert [(r["schema"], r["state"]) for r in report["not_current"]] == [(broken, "behind")]
    plain = run_cli(["status", "--config", str(ini)], url=fleet_url)
    assert f"BEHIND {broken}: r1" in plain.stdout
    # Fix the tenant, then only it is migrated.
    with fleet_engine.begin() as conn:
        conn.exec_driver_sql(f'ALTER TABLE "{broken}".items DROP COLUMN price')
    fixed = run_cli(["migrate", "--config", str(ini), "--json"], url=fleet_url)
    assert fixed.returncode == 0
    summary = json.loads(fixed.stdout)
    assert (summary["migrated"], summary["skipped_at_target"]) == (1, 9)
    assert run_cli(["status", "--config", str(ini)], url=fleet_url).returncode == 0


def test_migrate_selected_tenants_and_canary(fleet_url, fleet_engine, tmp_path):
    ini = write_env(tmp_path, revisions=("r1",))
    names = make_fleet(fleet_engine, ini, 6)
    add_revisions(tmp_path, ("r2",))
    some = run_cli(
        ["migrate", "--config", str(ini), "--tenant", names[4], "nobody", "--json"], url=fleet_url
    )
    assert some.returncode == 1
    summary = json.loads(some.stdout)
    assert summary["migrated"] == 1
    assert summary["failed"] == [{"schema": "nobody", "error": "not a tenant"}]
    canary = run_cli(["migrate", "--config", str(ini), "--canary", "2", "--jobs", "2"],
                     url=fleet_url)  # fmt: skip
    assert canary.returncode == 0, canary.stdout + canary.stderr
    assert migration_counts(fleet_engine) == dict.fromkeys(names, 1)


def test_progress_line_on_a_terminal(fleet_url, fleet_engine, tmp_path):
    pty = pytest.importorskip("pty")
    ini = write_env(tmp_path, revisions=("r1",))
    make_fleet(fleet_engine, ini, 4)
    add_revisions(tmp_path, ("r2",))
    main, child = pty.openpty()
    environ = {**os.environ, "DATABASE_URL": fleet_url}
    run = subprocess.Popen([*_alembic_env.CLI, "migrate", "--config", str(ini), "--jobs", "1"],
                           stdout=child, stderr=subprocess.DEVNULL, env=environ,
                           cwd=_alembic_env.ROOT)  # fmt: skip
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert run.wait(60) == 0
    shown = b"".join(chunks).decode()
    assert "\rmigrate: 4/4 tenants, 0 failed" in shown
    assert "ETA" in shown


def test_alembic_init_refuses_to_overwrite(tmp_path):
    first = run_cli(["alembic-init", str(tmp_path / "env")], url=None)
    assert first.returncode == 0
    assert (tmp_path / "env" / "versions").is_dir()
    assert "run_tenant_migrations" in (tmp_path / "env" / "env.py").read_text()
    second = run_cli(["alembic-init", str(tmp_path / "env")], url=None)
    assert second.returncode == 2 and "already holds" in second.stderr


def test_alembic_init_project_imports_models_beside_it(fleet_url, fleet_engine, tmp_path):
    ini = write_env(tmp_path, revisions=("r1",))
    names = make_fleet(fleet_engine, ini, 3)
    add_revisions(tmp_path, ("r2",))
    use_models(tmp_path)  # env.py now starts with `from models import Base`
    upgrade = ["-x", f"tenant={names[0]}", "upgrade", "head"]
    # The installed commands do not put the working directory on sys.path by themselves.
    setting = "prepend_sys_path = .\n"
    assert setting in ini.read_text()
    ini.write_text(ini.read_text().replace(setting, ""))
    without = run_script(ALEMBIC_SCRIPT, upgrade, url=fleet_url, cwd=tmp_path)
    assert without.returncode != 0 and "No module named 'models'" in without.stderr
    ini.write_text(ini.read_text().replace("path_separator", setting + "path_separator"))
    one = run_script(ALEMBIC_SCRIPT, upgrade, url=fleet_url, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert migration_counts(fleet_engine) == {names[0]: 1}
    # The fleet's worker processes import models.py too.
    fleet = run_script(SA_TENANCY_SCRIPT, ["migrate", "--jobs", "2", "--json"],
                       url=fleet_url, cwd=tmp_path)  # fmt: skip
    assert fleet.returncode == 0, fleet.stdout + fleet.stderr
    assert json.loads(fleet.stdout)["migrated"] == 2
    assert migration_counts(fleet_engine) == dict.fromkeys(names, 1)
    assert set(ledger(fleet_engine).values()) == {"r2"}
