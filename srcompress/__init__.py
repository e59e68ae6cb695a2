"""srcompress: compress one-step diffusion super-resolution teachers into small, fast students.

The package mirrors the DAG (ARCHITECTURE.md §2):
  flows/   Prefect flows (orchestration only)
  tasks/   one package per DAG step
  models/  pure PyTorch / diffusers code (no Prefect, MLflow, boto3 or Ray)
  infra/   config, artifact store, MLflow tracking, cache, Prefect/Ray settings
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (a pyiqa dependency, imported by peft) warns at import that it cannot fetch an optional 4-bit
# CPU kernel from a model hub. srcompress never uses 4-bit kernels and never fetches from hubs: keep it quiet.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
