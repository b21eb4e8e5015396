"""Benchmarks run by `make bench`: they print figures and keep them as JSON."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path("bench-results")
# Every topic and group a benchmark process makes starts with bench-<PROCESS>: its clean-up
# deletes only its own, so two benchmarks on one broker leave each other alone.
PROCESS = uuid.uuid4().hex[:4]


def new_run() -> str:
    """A name for one run of a benchmark, unique, and marked as this process's."""
    return f"{PROCESS}{uuid.uuid4().hex[:6]}"


def write_results(kind: str, results: dict[str, Any]) -> Path:
    """Keep ``results`` as bench-results/<kind>-<UTC time>.json, to compare over time."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=2))
    return out


def run_then_clean(main: Callable[[], None]) -> None:
    """Run a benchmark, then delete the topics this process made (``bench-<PROCESS>…``)."""
    from streams.settings import Settings
    from tests.kafka_helpers import delete_topics

    try:
        main()
    finally:
        delete_topics(
            Settings().kafka_bootstrap, f"bench-{PROCESS}", f"switchboard-bench-{PROCESS}"
        )
