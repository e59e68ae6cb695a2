"""srcompress: compress one-step diffusion super-resolution teachers into small, fast students.

The package mirrors the DAG (ARCHITECTURE.md §2):
  flows/   Prefect flows (orchestration only)
  tasks/   one package per DAG step
  models/  pure PyTorch / diffusers code (no Prefect, MLflow, boto3 or Ray)
  infra/   config, artifact store, MLflow tracking, cache, Prefect/Ray settings
"""

__version__ = "0.1.0"
