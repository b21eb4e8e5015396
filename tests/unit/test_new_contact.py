"""A new contact is a copy of a shared template (processors.state.new_contact): it is
the state validation makes, and what is made from it leaves the template as it was."""

from __future__ import annotations

from processors.state import _NEW_CONTACT, ContactState, apply_event, new_contact
from tests.records import contact_event


def test_a_new_contact_is_the_validated_one() -> None:
    made = new_contact("c-1")
    assert made == ContactState(contact_id="c-1")
    assert made.model_fields_set == {"contact_id"}
    assert made.model_dump_json() == ContactState(contact_id="c-1").model_dump_json()


def test_events_of_new_contacts_leave_the_template_empty() -> None:
    for n in range(3):
        apply_event(new_contact(f"c-{n}"), contact_event(event_id=f"e-{n}"))
    assert ContactState(contact_id="") == _NEW_CONTACT
