"""Connectors: sources turn external systems' events into canonical events on Kafka;
sinks carry command and notification topics out to the CRM and to people."""
