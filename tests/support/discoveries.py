"""Discovery fixtures (filled in with the discovery backends)."""
