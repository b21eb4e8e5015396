"""Sink connectors: CRM writers, notification channels and the delivery runtime."""
