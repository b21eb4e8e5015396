"""Fixtures for the SQL destinations: every test runs against SQLite and PostgreSQL.

PostgreSQL is ``SWITCHBOARD_TEST_POSTGRES_URL`` when set, else the native server that
``infra/postgres/postgres.sh`` runs (started here if it is down). Each test gets a schema
of its own (the URL's search_path names it), dropped afterwards, so tests never see each
other's rows or migrations."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from connectors.sinks.database import create_sql_engine

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_SCRIPT = ROOT / "infra" / "postgres" / "postgres.sh"


def _script(action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(POSTGRES_SCRIPT), action], cwd=ROOT, capture_output=True, text=True
    )


@pytest.fixture(scope="session")
def postgres_url() -> str:
    explicit = os.environ.get("SWITCHBOARD_TEST_POSTGRES_URL")
    if explicit:
        return explicit
    if _script("status").returncode != 0:
        started = _script("start")
        if started.returncode != 0:
            pytest.fail(f"{POSTGRES_SCRIPT} start failed:\n{started.stderr}", pytrace=False)
    return _script("url").stdout.strip()


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """A URL whose connections work in a fresh, empty schema of their own."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_sql_engine(postgres_url)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind, as a SQLAlchemy URL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'switchboard.sqlite3'}"
    url: str = request.getfixturevalue("pg_schema_url")
    return url
