"""Accounts, tokens, API keys, workspaces, rate limits, quotas and the audit log."""
