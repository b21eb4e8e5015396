"""`make run` as a user runs it (infra/run.sh): the demo comes up on the native broker and
registry, the load generator's stories reach the CRM store, the live view and
`switchboard explain` work against it, Ctrl-C leaves no process behind, and
`switchboard journeys` prints the funnels its audit topic holds."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from processors.workflows.library import load_library
from streams.kafka import read_topic
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import AUDIT
from tests.conftest import ROOT, Infra, free_port
from tests.integration.test_journeys import from_audit, tables
from tests.kafka_helpers import get, settings_env, wait_for

pytestmark = pytest.mark.integration


def in_session(session: int) -> list[str]:
    """The processes of a session (what one terminal's Ctrl-C is for), as pid and name."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            name, fields = rest.rsplit(") ", 1)
        except (OSError, ValueError):
            continue
        if int(fields.split()[3]) == session:  # field 6 of stat: the session id
            found.append(f"{pid} {name}")
    return found


def switchboard(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=settings_env(settings) | {"COLUMNS": "200"},  # rich wraps at 80 off a terminal
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_run_shows_the_pipeline_working_and_ctrl_c_leaves_nothing_behind(
    infra: Infra, settings: Settings, tmp_path: Path
) -> None:
    if infra.origin != "native":
        pytest.skip("infra/run.sh runs the native broker and registry")
    crm = tmp_path / "crm.db"
    settings = settings.model_copy(
        update={
            "gateway_port": free_port(),
            "metrics_port": free_port(),  # the CRM sink's; run.sh gives notify the next one
            "crm_database_url": f"sqlite:///{crm}",
            "sink_ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        }
    )
    env = settings_env(settings) | {
        "SWITCHBOARD_DEMO_DIR": str(tmp_path),
        "SWITCHBOARD_DEMO_RATE": "30",
    }
    log = (tmp_path / "run.log").open("wb")
    demo = subprocess.Popen(
        ["bash", str(ROOT / "infra" / "run.sh")],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # its own session, as a terminal would give it
    )
    try:

        def contacts_in_crm() -> int:
            assert demo.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            if not crm.exists():
                return 0
            with sqlite3.connect(crm) as db:
                try:
                    return int(db.execute("select count(*) from contacts").fetchone()[0])
                except sqlite3.OperationalError:  # the sink has not made its tables yet
                    return 0

        wait_for(lambda: contacts_in_crm() >= 20, "the stories to reach the CRM store", 120)

        view = switchboard(
            settings,
            "top",
            "--once",
            f"http://127.0.0.1:{settings.web_port}/metrics",
            f"http://127.0.0.1:{settings.gateway_port}/metrics",
            f"http://127.0.0.1:{settings.metrics_port}/metrics",
            f"http://127.0.0.1:{settings.metrics_port + 1}/metrics",
        )
        assert view.returncode == 0, view.stderr
        assert "down" not in view.stdout
        for figure in ("identity stage", "contact stage", "sql", f"{settings.app_id}-sink-crm"):
            assert figure in view.stdout, view.stdout

        with sqlite3.connect(crm) as db:
            [contact_id] = db.execute("select contact_id from contacts limit 1").fetchone()
        explained = switchboard(settings, "explain", contact_id)
        assert explained.returncode == 0, explained.stderr
        assert f"Contact {contact_id}" in explained.stdout and "contact_created" in explained.stdout
        assert get(f"http://127.0.0.1:{settings.gateway_port}/healthz")
    finally:
        # Ctrl-C: SIGINT to the whole foreground process group.
        os.killpg(demo.pid, signal.SIGINT)
        try:
            demo.wait(timeout=60)
        finally:
            log.close()
    wait_for(lambda: not in_session(demo.pid), "every process of the demo to end", 30)

    # `switchboard journeys` on the feed prints the funnels the audit topic holds (both
    # read after Ctrl-C, so the same settled topic).
    printed = switchboard(settings, "journeys", "--since", "1d")
    assert printed.returncode == 0, printed.stderr
    topic = AUDIT.full_name(settings)
    serde = AvroSerde(registry_client(settings.schema_registry_url), AUDIT.schema, topic)
    audit = [serde.decode(m.value()) for m in read_topic(settings, topic)]
    workflow = [a for a in audit if a["stage"] == "workflow"]
    printed_funnels = {name: steps for name, steps in tables(printed.stdout).items() if steps}
    assert printed_funnels, printed.stdout
    counted = from_audit(workflow, datetime.now(UTC), load_library())
    assert printed_funnels == counted, f"{printed.stdout}\n{counted}"
