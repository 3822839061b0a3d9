"""Model executors and weight fetching (no Prefect, no dataset I/O)."""
