"""Concilium: a self-hosted, offline-first AI orchestrator."""

__version__ = "0.1.0"

__all__ = ["__version__"]
