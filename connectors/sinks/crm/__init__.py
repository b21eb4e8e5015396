"""CRM writers: one Destination per CRM the sinks deliver commands to."""
