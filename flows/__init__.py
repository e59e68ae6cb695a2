"""Prefect flows: orchestration only, one module per deployable flow."""
