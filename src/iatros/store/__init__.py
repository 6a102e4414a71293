"""Durable records: tenants, keys, usage and the audit chain, in SQLite or PostgreSQL."""
