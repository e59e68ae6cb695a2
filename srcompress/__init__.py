"""srcompress: compress one-step diffusion super-resolution teachers into small, fast students.

The repository's top level is the DAG (docs/architecture.md §2), imported under this package:
  flows/   srcompress.flows   Prefect flows (orchestration only)
  tasks/   srcompress.tasks   one package per DAG step (+ tasks/common for what steps share)
  models/  srcompress.models  pure PyTorch / diffusers code (no Prefect, MLflow, boto3 or Ray)
  infra/   srcompress.infra   config, artifact store, MLflow tracking, cache, Prefect/Ray settings
This folder holds the package face: the CLI, the root config and the typed-config base.
"""

__version__ = "0.1.0"

import logging as _logging
import sys as _sys

# bitsandbytes comes with pyiqa (a declared dependency pyiqa never imports) and srcompress loads no
# bitsandbytes-quantised weights, yet diffusers (its quantizers), transformers and peft import it whenever it is
# installed, and its CPU backend imports torch._inductor: ~1.1 s in every process that imports diffusers — each
# Ray encode actor, DeepSpeed rank and CLI run (measured with -X importtime). Marked absent, importlib's
# find_spec answers None and those libraries take their no-bitsandbytes path. A process that imported it before
# srcompress keeps it.
_sys.modules.setdefault("bitsandbytes", None)

# bitsandbytes (a pyiqa dependency, imported by peft) warns at import that it cannot fetch an optional 4-bit
# CPU kernel from a model hub. srcompress never uses 4-bit kernels and never fetches from hubs: keep it quiet.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
