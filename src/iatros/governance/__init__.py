"""Tenants, keys, roles, rate limits, budgets, usage records and the audit trail."""
