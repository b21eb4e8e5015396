"""Sink connectors: CRM writers, notification channels and the delivery runtime (its
outcomes, HTTP and policies are in connectors.delivery, .http and .policy, which the
sources may use too)."""
