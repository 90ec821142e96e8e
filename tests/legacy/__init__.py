"""Frozen copies of adapters as an earlier release shipped them, to write the layouts that
later releases must read or upgrade."""
