"""An invalid scoring or routing file refuses to load, naming file, line and field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from processors.routing import load_rules
from processors.scoring import load_model
from streams.rules import RuleFileError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_rule_files_load() -> None:
    assert load_model().cap == 100
    assert load_rules().rules[-1].team == "inbound"


def test_a_bad_value_names_its_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "scoring.yaml", "version: 1\ncap: 100\nhalf_life_days: -3\n")
    with pytest.raises(RuleFileError) as caught:
        load_model(path)
    assert str(caught.value) == (f"{path}:3: field half_life_days: Input should be greater than 0")


def test_a_misspelt_key_and_a_missing_one_are_both_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "scoring.yaml",
        """\
half_life_days: 14
cap: 100
behaviour:
  - name: form
    event: FORM_SUBMITTED
    pionts: 15
""",
    )
    with pytest.raises(RuleFileError) as caught:
        load_model(path)
    assert str(caught.value).splitlines() == [
        f"{path}:4: field behaviour.0.points: Field required (add it)",
        f"{path}:6: field behaviour.0.pionts: Extra inputs are not permitted "
        "(remove it, or check its spelling)",
    ]


def test_an_unknown_event_type_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "scoring.yaml",
        "half_life_days: 14\ncap: 100\nbehaviour:\n"
        "  - {name: x, event: FORM_SUMBITTED, points: 1}\n",
    )
    with pytest.raises(
        RuleFileError,
        match=r"scoring\.yaml:4: field behaviour\.0\.event: "
        r"Input should be 'FORM_SUBMITTED'",
    ):
        load_model(path)


def test_a_routing_rule_needs_exactly_one_target(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "routing.yaml",
        """\
rules:
  - name: emea
    when: {country_in: [PT]}
    team: emea
  - name: broken
    when: {country_in: [US]}
""",
    )
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    assert str(caught.value) == f"{path}:5: field rules.1: give exactly one of: team, assign"


def test_not_yaml_at_all_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "routing.yaml", "rules:\n  - name: [unclosed\n")
    with pytest.raises(RuleFileError, match=r"routing\.yaml:\d+: not valid YAML"):
        load_rules(path)


def test_a_worker_with_an_invalid_rule_file_refuses_to_start(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "routing.yaml",
        "rules:\n  - name: x\n    team: inbound\n    when:\n      country_inn: [US]\n",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env | {"SWITCHBOARD_ROUTING_RULES": str(bad)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "invalid rule file, the worker does not start" in done.stderr
    assert f"{bad}:5: field rules.0.when.country_inn: Extra inputs are not permitted" in done.stderr
