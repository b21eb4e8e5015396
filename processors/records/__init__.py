"""The records the contact stage sends for its decisions: audit entries, CRM commands,
notifications and routing requests, built from pure inputs (state, decision, time), so
what a decision sends is unit-tested without Kafka.

Ids are deterministic (``decision_id``): the same decision from the same inputs has the
same id, which is the sinks' idempotency key and makes a replay recognisable.

One module per kind of decision: base.py (the three record shapes), contact.py,
timeline.py, sla.py, pipeline.py, workflows.py, billing.py and jobs.py."""
