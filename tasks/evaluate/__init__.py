"""The evaluation step: datasets, metrics, models, reports (see step.py and flows/evaluate.py)."""
