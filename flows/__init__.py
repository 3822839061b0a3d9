"""Prefect flows: orchestration only, no image math."""
