"""One module per pipeline stage: pure array functions plus thin Prefect wrappers."""
