"""One package per DAG step: plain functions that do the work, plus their Prefect task wrappers."""
