"""Source connectors: one module per external system, the HTTP gateway, backfill import
and the load generator."""
