"""What every ``sa-tenancy`` command shares: options, the engine, validation, output (private).

Split from :mod:`sa_tenancy.cli` (which imports it, never the other way round) so that each
module stays readable in one sitting. Names and the namespace are validated before the engine
connects; a usage problem raises :class:`UsageError`, which the command line turns into exit
code 2 with one line of text.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import NoReturn

from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from . import _namespace
from ._lifecycle_checks import _validate

#: The environment variable naming the namespace when ``--namespace`` is not given.
NAMESPACE_ENV = "SA_TENANCY_NAMESPACE"


class UsageError(Exception):
    """A problem with the command line or the environment: exit code 2."""


def fail(message: str) -> NoReturn:
    raise UsageError(message)


def url_of(args: argparse.Namespace) -> str:
    url = args.url or os.environ.get("DATABASE_URL")
    if not url:
        fail("no database: pass --url or set DATABASE_URL")
    return str(url)


def engine_of(args: argparse.Namespace) -> Engine:
    try:
        engine = create_engine(url_of(args), poolclass=NullPool)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ValueError) as error:
        fail(f"invalid database URL: {error}")
    try:
        with engine.connect():
            pass
    except sa_exc.DBAPIError as error:
        first = str(error.orig).strip().splitlines()
        fail(f"cannot connect to the database: {first[0] if first else error}")
    return engine


def namespace_of(args: argparse.Namespace) -> str | None:
    """The namespace to work in, validated before anything is sent (None: the default one)."""
    value = getattr(args, "namespace", None) or os.environ.get(NAMESPACE_ENV) or None
    return _namespace.check(value) or None


def checked_names(values: Sequence[str]) -> list[str]:
    """Validate every name before anything is sent: one bad name stops the whole command."""
    return [_validate(v, None) for v in values]


def config_of(args: argparse.Namespace, *, required: bool) -> str | None:
    path: str | None = args.config
    if path is None:
        path = "alembic.ini" if Path("alembic.ini").exists() or required else None
    if path is not None and not Path(path).exists():
        if required:
            fail(f"no Alembic configuration at {path!r}; pass --config or run alembic-init")
        return None
    return path


def emit(args: argparse.Namespace, data: Any, lines: Sequence[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:
            print(line)


def load_metadata(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        fail(f"--metadata wants MODULE:ATTRIBUTE (e.g. myapp.models:Base.metadata), not {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        value: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as error:
        fail(f"cannot load --metadata {spec!r}: {error}")
    return value


def message_of(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip().splitlines()
    return text[0] if text else type(error).__name__
