"""The contract's canonical identifiers (schemas.identifiers), and how a source refuses a
bad one: the same form and the same message, as its own Rejected naming the field."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from connectors.sources import base, identity
from schemas.identifiers import InvalidIdentifier, email, phone


def test_the_canonical_forms() -> None:
    assert email(" Ana@Acme.COM ") == "ana@acme.com"
    assert phone("(415) 555-0123") == "+14155550123"
    assert phone("+44 20 7946 0958", region="ZZ") == "+442079460958"
    assert email("  ") is None and phone(None) is None


@pytest.mark.parametrize(
    ("normalise", "value"),
    [(email, "a@b.c,evil@x.io"), (email, "ana@acme.com\nBcc: x@y.z"), (phone, "not a number")],
)
def test_a_bad_value_names_its_field(normalise: Callable[..., str | None], value: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        normalise(value, field="payload.contact")
    assert caught.value.field == "payload.contact"
    assert str(caught.value).startswith(f"field payload.contact: {value!r}")


def test_a_source_refuses_it_as_rejected_with_the_field() -> None:
    with pytest.raises(base.Rejected) as caught:
        identity.email("not-an-address", field="email")
    assert caught.value.field == "email"
    assert "is not an e-mail address" in str(caught.value)
