"""Evaluation scoring as Ray work (``run.ray_address``): one cluster for every heavy step.

Each Ray task takes one model and a slice of ``evaluate.items_per_task`` images: it reads only its slice from
the store, loads the model from its manifest (store or MLflow registry), runs it and scores every output, and
sends back the per-image rows, the grid outputs and the distribution metrics' accumulated features — never the
images. All (model, slice) tasks are submitted at once, so a 100k-image set scales with the cluster; the
driver folds the slices in item order (``runner.summarise``), which gives the numbers of a single pass.

Efficiency (latency, MACs, memory) is not measured here: timings taken on different nodes are not side by
side, so the driver measures every model itself after scoring.
"""

from __future__ import annotations

from srcompress.infra.context import RunContext
from srcompress.infra.manifest import Manifest
from srcompress.infra.ray_cluster import map_on_ray, where_am_i
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.threads import ray_task_threads, set_threads
from srcompress.tasks.evaluate.config import EvaluateConfig
from srcompress.tasks.evaluate.data_step import read_eval_set
from srcompress.tasks.evaluate.runner import Scored, build_metrics, score_items


def score_slice_on_worker(job_json: str, model: str, indices: list[int], keep: list[int]) -> dict:
    """A Ray task: ``model`` on the items at ``indices``; returns ``Scored`` as a dict plus who computed it."""
    import json

    from srcompress.tasks.evaluate import step  # the step's model loading and metric conventions

    job = json.loads(job_json)
    ctx = RunContext.model_validate_json(job["ctx"])
    cfg = EvaluateConfig.model_validate_json(job["cfg"])
    eval_set = Manifest.model_validate_json(job["eval_set"])
    models = {k: Manifest.model_validate_json(v) for k, v in job["models"].items()}
    teacher_cfg = TeacherConfig.model_validate_json(job["teacher_cfg"])
    set_threads(ray_task_threads(ctx))
    items, _ = read_eval_set(ctx, eval_set, indices)
    up = step.build_upscaler(ctx, cfg, job["scale"], model, models, teacher_cfg)
    metrics, _ = build_metrics(cfg.metrics, step.metric_env(cfg))
    scored = score_items(model, up, items, indices, metrics, set(keep))
    return {"rows": scored.rows, "values": scored.values, "dist": scored.dist, "outputs": scored.outputs,
            "worker": where_am_i(), "describe": up.describe()}


class ClusterScorer:
    """``scorer`` for ``evaluate_models``: the first call runs every (model, slice) task on the cluster; each
    call returns one model's slices in item order."""

    def __init__(self, ctx: RunContext, cfg: EvaluateConfig, eval_set: Manifest, models: dict[str, Manifest],
                 teacher_cfg: TeacherConfig, names: list[str], n_items: int, keep: set[int], log):
        import json

        self.ctx, self.names, self.log = ctx, names, log
        scale = int(eval_set.extra.get("scale", 4))
        self.job = json.dumps({"ctx": ctx.model_dump_json(), "cfg": cfg.model_dump_json(),
                               "eval_set": eval_set.model_dump_json(), "scale": scale,
                               "models": {k: m.model_dump_json() for k, m in models.items()},
                               "teacher_cfg": teacher_cfg.model_dump_json()})
        step = cfg.items_per_task
        self.slices = [list(range(i, min(i + step, n_items))) for i in range(0, n_items, step)]
        self.keep = sorted(keep)
        self.parts: dict[str, list[Scored]] | None = None
        self.workers: dict[str, int] = {}
        self.described: dict[str, dict] = {}  # each model as its tasks built it (the driver may never load it)

    def _run(self) -> dict[str, list[Scored]]:
        calls = [(self.job, name, sl, [k for k in self.keep if k in sl]) for name in self.names for sl in self.slices]
        got: dict[int, dict] = {}
        for i, row in map_on_ray(score_slice_on_worker, calls, self.ctx.ray_address,
                                 on_start=lambda info: self.log.info("evaluate: %d scoring tasks (%d models × %d "
                                                                     "slices) on Ray %s", len(calls), len(self.names),
                                                                     len(self.slices), info)):
            got[i] = row
            self.described.setdefault(calls[i][1], row["describe"])
            self.workers[row["worker"]] = self.workers.get(row["worker"], 0) + 1
            self.log.info("evaluate: %s images %d-%d scored on %s (%d/%d)", calls[i][1], calls[i][2][0],
                          calls[i][2][-1], row["worker"], len(got), len(calls))
        parts: dict[str, list[Scored]] = {n: [] for n in self.names}
        for i in range(len(calls)):  # calls are model-major, slice order within: item order per model
            r = got[i]
            parts[calls[i][1]].append(Scored(r["rows"], r["values"], r["dist"], r["outputs"]))
        return parts

    def __call__(self, model: str) -> list[Scored]:
        if self.parts is None:
            self.parts = self._run()
        return self.parts[model]

    def describe(self, model: str) -> dict:
        self(model)
        return self.described[model]


