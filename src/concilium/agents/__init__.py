"""Agents: tools, their policy and sandbox, and the loop that uses them."""
