"""The example apps keep their contract: in-process, and served by their real servers.

The contract (the same for ``examples/fastapi_app.py``, ``flask_app.py`` and ``ninja_app.py``):
tenant from the ``X-Tenant`` header; ``POST /notes {"body": str}`` → 201 ``{"id", "body"}``;
``GET /notes`` → 200 ``[{"id", "body"}, ...]``; missing or invalid tenant → 400, unknown tenant →
404, all as ``{"detail": ...}``. ``TENANTS`` are provisioned at start-up, idempotently.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sa_tenancy.testing import unique_name

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ["fastapi", "flask", "ninja"]
STRATEGIES = ["search_path", "translate_map"]


def load(framework: str) -> types.ModuleType:
    """Import an example module without letting its module-level app touch anything real."""
    pytest.importorskip({"ninja": "django"}.get(framework, framework))
    name = f"examples.{framework}_app"
    if name not in sys.modules:
        with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as scratch:
            mp.setenv("DATABASE_URL", f"sqlite:///{scratch}/app.db")
            mp.setenv("TENANTS", "")  # provision nothing
            mp.delenv("TENANCY_STRATEGY", raising=False)
            importlib.import_module(name)
    return sys.modules[name]


Call = Any  # (method, path, tenant=None, json=None) -> (status, body)


@contextlib.contextmanager
def in_process(framework: str, **config: str) -> Iterator[Call]:
    """A client for ``create_app(**config)`` of the example, through the framework's own client."""
    module = load(framework)
    if framework == "fastapi":
        from fastapi.testclient import TestClient

        with TestClient(module.create_app(**config)) as client:

            def call(method, url, tenant=None, json=None):
                headers = {"X-Tenant": tenant} if tenant is not None else {}
                response = client.request(method, url, headers=headers, json=json)
                return response.status_code, response.json()

            yield call
    elif framework == "flask":
        client = module.create_app(**config).test_client()

        def call(method, url, tenant=None, json=None):
            headers = {"X-Tenant": tenant} if tenant is not None else {}
            response = client.open(url, method=method, headers=headers, json=json)
            return response.status_code, response.json

        yield call
    else:
        from django.test import Client  # type: ignore[import-untyped]
        from django.test import override_settings
        from django.urls import path  # type: ignore[import-untyped]

        api = module.create_api(namespace=f"n{uuid.uuid4().hex}", **config)
        urls = types.ModuleType(f"urls_{uuid.uuid4().hex}")
        urls.urlpatterns = [path("", api.urls)]  # type: ignore[attr-defined]
        with override_settings(ROOT_URLCONF=urls, ALLOWED_HOSTS=["testserver"], DEBUG=False):
            client = Client()

            def call(method, url, tenant=None, json=None):
                headers = {"X-Tenant": tenant} if tenant is not None else {}
                if method == "POST":
                    response = client.post(
                        url, json, content_type="application/json", headers=headers
                    )
                else:
                    response = client.generic(method, url, headers=headers)
                return response.status_code, response.json()

            yield call


def check_contract(call: Call, a: str, b: str) -> None:
    assert call("POST", "/notes", a, {"body": "first"}) == (201, {"id": 1, "body": "first"})
    assert call("POST", "/notes", b, {"body": "other"}) == (201, {"id": 1, "body": "other"})
    assert call("POST", "/notes", a, {"body": "second"}) == (201, {"id": 2, "body": "second"})
    assert call("GET", "/notes", a) == (
        200,
        [{"id": 1, "body": "first"}, {"id": 2, "body": "second"}],
    )
    assert call("GET", "/notes", b) == (200, [{"id": 1, "body": "other"}])
    assert call("GET", "/notes") == (400, {"detail": "missing tenant: send the X-Tenant header"})
    assert call("GET", "/notes", "Not-A-Name") == (400, {"detail": "invalid tenant name"})
    ghost = unique_name("ghost")
    assert call("GET", "/notes", ghost) == (404, {"detail": f"unknown tenant {ghost!r}"})
    assert call("POST", "/notes", ghost, {"body": "lost"})[0] == 404
    assert call("POST", "/notes", a, {"text": "no body"})[0] == 422


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_contract_on_postgresql(framework, strategy, pg_url, pg_example_tenants):
    a, b = pg_example_tenants[:2]
    config = {"database_url": pg_url, "tenants": f"{a},{b}", "strategy": strategy}
    with in_process(framework, **config) as call:
        check_contract(call, a, b)
    with in_process(framework, **config) as call:  # provisioning again changes nothing
        assert call("GET", "/notes", b) == (200, [{"id": 1, "body": "other"}])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_contract_on_sqlite_by_default(framework, tmp_path):
    a, b = unique_name("ex"), unique_name("ex")
    with in_process(framework, database_url=f"sqlite:///{tmp_path}/app.db", tenants=f"{a},{b}") as (
        call
    ):
        check_contract(call, a, b)
    assert {p.name for p in tmp_path.iterdir()} >= {f"{a}.db", f"{b}.db"}


# -- real servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(framework: str, port: int) -> list[str]:
    if framework == "fastapi":
        app = ["-m", "uvicorn", "examples.fastapi_app:app", "--host", "127.0.0.1"]
        return [sys.executable, *app, "--port", str(port)]
    if framework == "flask":
        app = ["-m", "flask", "--app", "examples.flask_app", "run", "--host", "127.0.0.1"]
        return [sys.executable, *app, "--port", str(port)]
    return [sys.executable, "examples/ninja_app.py", "runserver", "--noreload", f"127.0.0.1:{port}"]


@contextlib.contextmanager
def served(framework: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """Run the example's real server command; always stop it."""
    with serve(lambda port: server_command(framework, port), env, log, name=framework) as base:
        yield base


@contextlib.contextmanager
def serve(
    command: Any,
    env: dict[str, str],
    log: Path,
    *,
    name: str,
    cwd: Path = ROOT,
    inherit: bool = True,
) -> Iterator[str]:
    """Run ``command(port)`` as a real server on a free loopback port until it answers
    ``GET /notes``; yield its base URL; always stop it. ``env`` is added to this process's
    environment, or replaces it with ``inherit=False``."""
    import httpx

    port = free_port()
    framework = name
    with log.open("w") as out:
        proc = subprocess.Popen(
            command(port),
            cwd=cwd,
            env={**os.environ, **env} if inherit else env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{framework} server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                httpx.get(f"{base}/notes", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{framework} server did not answer in 30 s:\n{log.read_text()}")
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def drive_concurrently(base: str, tenants: list[str], per_tenant: int) -> dict[str, Any]:
    """POSTs and GETs for all tenants at once; returns what each tenant's GETs saw."""
    import httpx

    def work(job: tuple[str, int]) -> list[str]:
        tenant, i = job
        headers = {"X-Tenant": tenant}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            created = client.post("/notes", json={"body": f"{tenant}-{i}"})
            assert created.status_code == 201, created.text
            assert created.json()["body"] == f"{tenant}-{i}"
            listed = client.get("/notes")
            assert listed.status_code == 200, listed.text
            return [note["body"] for note in listed.json()]

    jobs = [(t, i) for i in range(per_tenant) for t in tenants]  # tenants interleaved
    with ThreadPoolExecutor(max_workers=8) as pool:
        seen = list(pool.map(work, jobs))
    foreign = [
        body
        for (tenant, _), bodies in zip(jobs, seen, strict=True)
        for body in bodies
        if not body.startswith(f"{tenant}-")
    ]
    final = {}
    for tenant in tenants:
        response = httpx.get(f"{base}/notes", headers={"X-Tenant": tenant}, timeout=30)
        final[tenant] = response.json()
    return {"foreign": foreign, "final": final}


def check_served(base: str, tenants: list[str], per_tenant: int = 8) -> None:
    import httpx

    result = drive_concurrently(base, tenants, per_tenant)
    assert result["foreign"] == []  # 0 cross-tenant rows seen, during the run...
    for tenant, notes in result["final"].items():  # ...or after it
        assert sorted(n["body"] for n in notes) == sorted(
            f"{tenant}-{i}" for i in range(per_tenant)
        )
        assert sorted(n["id"] for n in notes) == list(range(1, per_tenant + 1))
    assert httpx.get(f"{base}/notes").status_code == 400
    assert httpx.get(f"{base}/notes", headers={"X-Tenant": "Bad"}).status_code == 400
    ghost = httpx.get(f"{base}/notes", headers={"X-Tenant": unique_name("ghost")})
    assert ghost.status_code == 404 and ghost.json()["detail"].startswith("unknown tenant")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fastapi_example_under_uvicorn(strategy, pg_url, pg_example_tenants, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    env = {
        "DATABASE_URL": pg_url,
        "TENANTS": ",".join(pg_example_tenants),
        "TENANCY_STRATEGY": strategy,
    }
    with served("fastapi", env, tmp_path / "server.log") as base:
        check_served(base, pg_example_tenants)


@pytest.mark.parametrize("framework", ["flask", "ninja"])
def test_wsgi_examples_under_their_dev_servers(framework, pg_url, pg_example_tenants, tmp_path):
    pytest.importorskip({"ninja": "django"}.get(framework, framework))
    env = {
        "DATABASE_URL": pg_url,
        "TENANTS": ",".join(pg_example_tenants),
        "TENANCY_STRATEGY": "translate_map",
    }
    with served(framework, env, tmp_path / "server.log") as base:
        check_served(base, pg_example_tenants, per_tenant=4)


# -- worker CLI --------------------------------------------------------------------------------


def worker(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TENANTS")}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / "worker.py"), *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_help(tmp_path):
    done = worker("--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "usage: worker.py" in done.stdout and not (tmp_path / "demo_data").exists()


def test_worker_on_sqlite_by_default(tmp_path):
    done = worker("count", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "acme: 0\nglobex: 0\n"), done.stderr
    assert "tenants 2/2, 0 failed" in done.stderr


def test_worker_on_postgresql_reports_missing_tenants(pg_url, pg_example_tenants, tmp_path):
    a, b = pg_example_tenants[:2]
    ghost = unique_name("ghost")
    env = {"DATABASE_URL": pg_url, "TENANTS": f"{a},{b}"}
    done = worker("--tenants", f"{a},{ghost},{b}", "add", "hello", cwd=tmp_path, **env)
    assert done.returncode == 1
    assert done.stdout == f"{a}: 1\n{b}: 1\n"
    assert "2 of 3 tenants succeeded, 1 failed" in done.stderr
    assert f"{ghost}: UnknownSchema" in done.stderr
    done = worker("--tenants", f"{a},{b}", "count", cwd=tmp_path, **env)
    assert (done.returncode, done.stdout) == (0, f"{a}: 1\n{b}: 1\n")
