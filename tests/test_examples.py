"""The README's quickstart runs as shown, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy import text

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"
EXPECTED = "acme -> ['hello from acme']\nglobex -> ['hello from globex']\n"


def run_quickstart(cwd, **env):
    return subprocess.run(
        [sys.executable, str(QUICKSTART)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_quickstart_on_sqlite(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    out = subprocess.run(
        [sys.executable, str(QUICKSTART)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == EXPECTED
    assert sorted(p.name for p in (tmp_path / "demo_data").iterdir()) == [
        "acme.db",
        "app.db",
        "globex.db",
    ]


def test_quickstart_on_postgresql(tmp_path, pg_url):
    try:
        assert run_quickstart(tmp_path, DATABASE_URL=pg_url) == EXPECTED
    finally:
        engine = create_engine(pg_url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS acme CASCADE"))
            conn.execute(text("DROP SCHEMA IF EXISTS globex CASCADE"))
        engine.dispose()


def test_readme_shows_the_quickstart_verbatim():
    readme = (QUICKSTART.parent.parent / "README.md").read_text()
    code = QUICKSTART.read_text()
    assert f"```python\n{code}```" in readme
    assert len(code.splitlines()) <= 20
