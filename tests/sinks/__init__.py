"""Tests of the sink destinations against local servers that speak their protocol."""
