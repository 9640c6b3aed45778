"""Examples: the traffic generator and the one-command demo (importable for tests)."""
