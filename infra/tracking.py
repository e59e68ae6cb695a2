"""MLflow tracking: one parent run per pipeline run, one nested run per step, manifests as dataset inputs.

Everything goes through an explicit ``MlflowClient`` and explicit run ids — MLflow's fluent "active run" is
thread-local (docs/stack.md, MLflow), and Prefect runs tasks in worker threads.

- Default backend: sqlite under the work dir; any tracking URI (e.g. a remote ``mlflow server``) when set.
- Artifacts go through the artifact store: the experiment's artifact location is ``<store>/mlflow`` (file or
  s3), unless the tracking URI is an HTTP server, which then proxies artifacts to its own destination.
- Params are the flattened, *redacted* step config; credentials never reach MLflow.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from pydantic import Field

from srcompress.infra.config import StrictModel, flatten, redact, redact_text
from srcompress.infra.manifest import Manifest

log = logging.getLogger(__name__)

TAG_PREFIX = "srcompress."
# Manifest kinds that are models (logged as MLflow LoggedModels, linked to the runs that make and use them).
MODEL_KINDS = frozenset({"teacher", "mask", "student"})


class TrackingConfig(StrictModel):
    """MLflow tracking server, experiment and artifact location."""

    uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db.")
    experiment: str = Field("srcompress", min_length=1, description="MLflow experiment name.")
    artifact_location: str | None = Field(
        None, description="Artifact root for a new experiment; default <store>/mlflow (ignored for http servers, which proxy)."
    )


@contextlib.contextmanager
def _sqlite_init_lock(uri: str) -> Iterator[None]:
    """Two processes opening one fresh sqlite MLflow database at once race on MLflow's schema migrations
    (alembic); an exclusive lock beside the database serialises the first open of each process."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".init-lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """MLflow's own source / user tags: who ran what (entry point, git commit of a source checkout)."""
    import getpass
    import subprocess
    import sys

    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "srcompress " + " ".join(sys.argv[1:2]) if
            Path(sys.argv[0]).name == "srcompress" else Path(sys.argv[0]).name or "python"}
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    root = Path(__file__).resolve().parents[1]
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if len(commit) == 40:
            tags["mlflow.source.git.commit"] = commit
    return tags


def resolve_tracking_uri(cfg: TrackingConfig, workdir: str | Path) -> str:
    if cfg.uri:
        return cfg.uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def param_strings(params: Mapping[str, Any]) -> dict[str, str]:
    """Params as MLflow stores them: redacted, flattened to dotted keys, keys ≤ 250 and values ≤ 6,000 chars."""
    return {k[:250]: str(v)[:6000] for k, v in flatten(redact(dict(params))).items()}


def preload() -> None:
    """Import MLflow's client now (~4 s): the CLI calls this while Prefect's local API starts, so the run's first
    tracking call does not pay for it afterwards."""
    import mlflow.tracking  # noqa: F401


class Tracker:
    """Thin, explicit wrapper over ``MlflowClient`` for the pipeline's lineage records."""

    def __init__(self, cfg: TrackingConfig, workdir: str | Path, store_root_uri: str | None = None,
                 s3_endpoint_url: str | None = None):
        from mlflow import MlflowClient

        self.cfg = cfg
        self.uri = resolve_tracking_uri(cfg, workdir)
        self.s3_endpoint_url = s3_endpoint_url
        with _sqlite_init_lock(self.uri):
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment(store_root_uri)

    def _experiment(self, store_root_uri: str | None) -> str:
        exp_id = self._find_or_create(store_root_uri)
        with contextlib.suppress(Exception):  # the UI then opens on the training runs, not the GenAI traces page
            self.client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
        return exp_id

    def _find_or_create(self, store_root_uri: str | None) -> str:
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        location = self.cfg.artifact_location
        if location is None and store_root_uri and not self.uri.startswith(("http://", "https://")):
            location = store_root_uri.rstrip("/") + "/mlflow"
        try:
            return self.client.create_experiment(self.cfg.experiment, artifact_location=location)
        except Exception:  # created concurrently by another process
            exp = self.client.get_experiment_by_name(self.cfg.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    # -- runs ------------------------------------------------------------------------------------------
    def start_pipeline_run(self, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
        owner = {"owner.host": socket.gethostname(), "owner.pid": os.getpid(), "owner.started": _started(os.getpid())}
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={f"{TAG_PREFIX}{k}": str(v) for k, v in {**tags, **owner}.items()}
                                     | source_tags())
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_step_run(self, parent_run_id: str, step: str, params: Mapping[str, Any],
                       tags: Mapping[str, str] | None = None) -> str:
        all_tags = {"mlflow.parentRunId": parent_run_id, f"{TAG_PREFIX}step": step} | source_tags()
        all_tags.update({f"{TAG_PREFIX}{k}": str(v) for k, v in (tags or {}).items()})
        run = self.client.create_run(self.experiment_id, run_name=step, tags=all_tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def reap_stale_runs(self) -> list[dict[str, str]]:
        """Pipeline runs left ``RUNNING`` by a process of this host that no longer exists (kill -9, power loss)
        are marked ``KILLED``, with their step runs. Returns their tags (the caller marks their Prefect flow
        runs crashed). Runs of other hosts are left alone: their owner may be alive."""
        host = socket.gethostname()
        stale = []
        runs = self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
        for r in runs:
            tags = r.data.tags
            if tags.get(f"{TAG_PREFIX}owner.host") != host or "mlflow.parentRunId" in tags:
                continue
            pid, started = tags.get(f"{TAG_PREFIX}owner.pid"), tags.get(f"{TAG_PREFIX}owner.started")
            if pid is None or (pid.isdigit() and _started(int(pid)) == started):
                continue  # its owner is still running
            for step in self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{r.info.run_id}'"):
                if step.info.status == "RUNNING":
                    self.client.set_terminated(step.info.run_id, status="KILLED")
            self.client.set_terminated(r.info.run_id, status="KILLED")
            self.client.set_tag(r.info.run_id, f"{TAG_PREFIX}killed_reason",
                                f"owner process {pid} on {host} died without ending the run")
            stale.append({k.removeprefix(TAG_PREFIX): v for k, v in tags.items() if k.startswith(TAG_PREFIX)}
                         | {"run_id": r.info.run_id})
        return stale

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @contextlib.contextmanager
    def step_run(self, parent_run_id: str, step: str, params: Mapping[str, Any],
                 tags: Mapping[str, str] | None = None) -> Iterator[str]:
        """A nested run that is marked FAILED if the body raises (MLflow does not do this itself, #10510)."""
        run_id = self.start_step_run(parent_run_id, step, params, tags)
        try:
            yield run_id
        except BaseException:
            self.end_run(run_id, "FAILED")
            raise
        self.end_run(run_id, "FINISHED")

    def step_outcomes(self, parent_run_id: str) -> dict[str, str]:
        """Step run name → ``ran`` | ``cached`` | ``failed``, for the nested runs of one pipeline run."""
        runs = self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                       max_results=1000)
        out = {}
        for r in sorted(runs, key=lambda r: r.info.start_time):
            hit = r.data.tags.get(f"{TAG_PREFIX}cache_hit") == "True"
            out[r.info.run_name] = "failed" if r.info.status == "FAILED" else ("cached" if hit else "ran")
        return out

    # -- logging ---------------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in sorted(param_strings(params).items())]
        for i in range(0, len(items), 100):  # MLflow's log_batch limit
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def log_curves(self, run_id: str, curves: Mapping[str, Sequence[float]]) -> None:
        """Whole training curves as metric histories (step = 1-based index), in batches of 1000 points: one
        call per batch, where ``log_metrics`` per step would be one round trip per point."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(name, float(v), now, i + 1) for name, values in sorted(curves.items())
                 for i, v in enumerate(values)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, f"{TAG_PREFIX}{k}", str(redact(v, k))[:5000])

    def log_manifest(self, run_id: str, manifest: Manifest, context: str) -> None:
        """Record a manifest as an MLflow dataset input whose digest is *our* content digest."""
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        # MetaDataset's default digest hashes (name, source) only — pass the content digest explicitly.
        source = HTTPDatasetSource(url=manifest.uri)  # a URI-carrying source that needs no artifact repo
        ds = MetaDataset(source=source, name=f"{manifest.step}:{manifest.kind}", digest=manifest.digest[:36])
        tags = [InputTag("mlflow.data.context", context), InputTag(f"{TAG_PREFIX}sha256", manifest.digest),
                InputTag(f"{TAG_PREFIX}cache_key", manifest.cache_key)]
        entity = DatasetInput(ds._to_mlflow_entity(), tags)
        if manifest.kind in MODEL_KINDS and context != "output":  # a model this step consumes: lineage by model
            self._link_model(run_id, manifest, output=False)
        for attempt in range(4):
            try:
                self.client.log_inputs(run_id, datasets=[entity])
                return
            except Exception as exc:
                # Two runs logging the same dataset (same step output, same digest) into one experiment at once:
                # MLflow's SQL store looks the dataset up, then inserts it, so the later insert breaks the unique
                # (experiment, name, digest) key (seen with a scheduled and a triggered retrain on one sqlite
                # database). Retried, the lookup finds the row and only this run's input link is written.
                if attempt == 3 or not _is_dataset_race(exc):
                    raise
                time.sleep(0.2 * (attempt + 1))

    def log_manifest_output(self, run_id: str, manifest: Manifest) -> None:
        """The step's own output: tags for lookup + the manifest JSON as a run artifact; a model (teacher,
        searched mask + LoRA, student of either stage) is also an MLflow LoggedModel, the run's model output."""
        self.set_tags(run_id, {"output.kind": manifest.kind, "output.uri": manifest.uri,
                               "output.digest": manifest.digest, "cache_key": manifest.cache_key,
                               "code_version": manifest.code_version, "config_hash": manifest.config_hash})
        self.log_metrics(run_id, {f"count.{k}": v for k, v in manifest.counts.items()})
        self.log_text(run_id, manifest.to_json(), f"manifests/{manifest.step}-{manifest.kind}.json")
        self.log_manifest(run_id, manifest, context="output")
        if manifest.kind in MODEL_KINDS:
            self._link_model(run_id, manifest, output=True)

    def _link_model(self, run_id: str, manifest: Manifest, output: bool) -> None:
        """The model manifest as the run's LoggedModel output (created unless one with its digest exists) or
        input. Lineage, not the result: a failure here is logged and the step's output stands."""
        from mlflow.entities import LoggedModelInput, LoggedModelOutput

        try:
            model_id = self.logged_model(manifest)
            if output:
                model_id = model_id or self._create_logged_model(run_id, manifest)
                self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
            elif model_id:
                self.client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
        except Exception as exc:  # noqa: BLE001 — e.g. a tracking server without MLflow 3's logged models
            log.warning("MLflow: could not link %s %s as the run's model %s: %s", manifest.kind,
                        manifest.digest[:12], "output" if output else "input", exc)

    def logged_model(self, manifest: Manifest) -> str | None:
        """The READY LoggedModel of a model manifest in this experiment (by content digest), the oldest if two
        runs created one at once (every later run then links the same one)."""
        found = self.client.search_logged_models(  # (a status filter matches nothing on MLflow 3.17's SQL store)
            [self.experiment_id], f"tags.`{TAG_PREFIX}sha256` = '{manifest.digest}'",
            order_by=[{"field_name": "creation_time", "ascending": True}], max_results=50)
        return next((m.model_id for m in found if str(m.status).endswith("READY")), None)

    def _create_logged_model(self, run_id: str, manifest: Manifest) -> str:
        # external (mlflow.create_external_model's convention, through this tracker's client): the weights stay
        # where the step published them in the artifact store, the model records where (tag srcompress.uri)
        import tempfile

        from mlflow.models.utils import get_external_mlflow_model_spec
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_IS_EXTERNAL

        model = self.client.create_logged_model(
            self.experiment_id, name=manifest.step, source_run_id=run_id, model_type=manifest.kind,
            tags={f"{TAG_PREFIX}sha256": manifest.digest, f"{TAG_PREFIX}uri": redact_text(manifest.uri),
                  f"{TAG_PREFIX}cache_key": manifest.cache_key, f"{TAG_PREFIX}config_hash": manifest.config_hash,
                  MLFLOW_MODEL_IS_EXTERNAL: "true"})
        try:
            with tempfile.TemporaryDirectory() as tmp:  # the stub MLmodel that makes an external model registrable
                get_external_mlflow_model_spec(model).save(os.path.join(tmp, "MLmodel"))
                self._artifact_env()
                self.client.log_model_artifacts(model.model_id, tmp)
        except Exception:
            self.client.finalize_logged_model(model.model_id, "FAILED")  # never found as READY, never linked
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        return model.model_id

    def _artifact_env(self) -> None:
        # MLflow's S3 artifact repository reads the endpoint from the environment only; set it to this
        # tracker's store endpoint right before each artifact call.
        if self.s3_endpoint_url:
            os.environ["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._artifact_env()
        self.client.log_text(run_id, text, artifact_file)

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a directory's contents, under ``artifact_path``."""
        self._artifact_env()
        if Path(local_path).is_dir():
            self.client.log_artifacts(run_id, str(local_path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(local_path), artifact_path)


def _is_dataset_race(exc: Exception) -> bool:
    """A unique-key clash on MLflow's ``datasets`` table (sqlite's or PostgreSQL's wording, direct or relayed by
    an ``mlflow server``)."""
    text = str(exc)
    return "datasets" in text and ("UNIQUE constraint failed" in text or "duplicate key value" in text)


def _started(pid: int) -> str:
    """A process's start time as a string ('' if it does not exist): with the pid, identifies it uniquely."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.3f}"
    except psutil.Error:
        return ""
