"""Connectors: sources turn external systems' events into canonical events on Kafka;
sinks carry command and notification topics out to the CRM and to people. The two are
peers and never import each other; what both use to call out (delivery outcomes, HTTP,
retry and rate-limit policies) lives here, beside them."""
