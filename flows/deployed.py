"""The flows as ``prefect.yaml`` deploys them: the same flows, with what an unattended run needs.

    prefect deploy --all          # retrain-nightly, retrain-on-new-dataset, evaluate-on-new-dataset, …-cluster

- **Retries.** A failed run is retried once after a delay. It is safe: every finished step is a verified cache
  hit and an interrupted training step resumes from its checkpoint, so a retry redoes only what did not finish
  (a store, tracking server or Ray node that was briefly away). A deterministic failure (a bad config) fails
  again quickly.
- **Timeouts** bound a hung run, so that a stuck worker does not hold the deployment's concurrency slot for
  ever: 24 h for a retraining (the SD3-scale DAG on one GPU node is hours), 6 h for an evaluation.
- **Parameters validated** when the run starts, against the signature (``until`` is one of the DAG's steps):
  a bad parameter fails the run before any work, with Prefect's message naming it. ``srcompress run`` calls
  the undecorated flows, which the CLI validates itself, before any server starts.
"""

from __future__ import annotations

from srcompress.flows.compress import compress
from srcompress.flows.evaluate import evaluate

RETRAIN_TIMEOUT_S = 24 * 3600
EVALUATE_TIMEOUT_S = 6 * 3600

retrain = compress.with_options(retries=1, retry_delay_seconds=300, timeout_seconds=RETRAIN_TIMEOUT_S,
                                validate_parameters=True)
evaluate_new = evaluate.with_options(retries=1, retry_delay_seconds=120, timeout_seconds=EVALUATE_TIMEOUT_S,
                                     validate_parameters=True)
