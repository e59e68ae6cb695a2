"""Command line: ``srcompress run`` (the DAG), ``srcompress evaluate``, ``srcompress plan``, ``srcompress upscale``,
``srcompress config show``, ``srcompress assets``.

    srcompress run --config configs/tiny.yaml --workdir runs/tiny --until degrade --summary runs/tiny/summary.json
    srcompress evaluate --config configs/tiny.yaml --data ~/photos --models bicubic,teacher --summary S.json
    srcompress plan --config configs/tsdsr-sd3.yaml [--keep 8 | --mask result.json] [--json]
    srcompress upscale --model runs/student --input lr.png --output sr.png
    srcompress config show --config configs/tiny.yaml --set degrade.crop_size=64
    srcompress assets fetch
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml

from srcompress.cliutil import fail as _fail

app = typer.Typer(no_args_is_help=True, help="Compress one-step diffusion SR teachers.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
app.add_typer(config_app, name="config")
assets_app = typer.Typer(no_args_is_help=True, help="Offline metric assets (NIQE parameters).")
app.add_typer(assets_app, name="assets")
app.add_typer(__import__("srcompress.datasets_cli", fromlist=["app"]).app, name="datasets")  # datasets register
app.add_typer(__import__("srcompress.models_cli", fromlist=["app"]).app, name="models")  # list | promote | rollback


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        from srcompress.infra.manifest import code_version

        typer.echo(f"srcompress {version('srcompress')} (code {code_version('srcompress')})")
        raise typer.Exit()


@app.callback()
def _root(show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                            help="Print the package and code version, then exit.")) -> None:
    """Compress one-step diffusion SR teachers."""


ConfigOpt = typer.Option(..., "--config", "-c", help="YAML config file or preset name (configs/<name>.yaml).")
SetOpt = typer.Option(None, "--set", help="Override a key: section.key=value (repeatable).")


def _load(config: str, overrides: list[str] | None, machine: bool = True):
    """Load and validate; ``machine`` also checks devices and local folders — all before any work starts."""
    from srcompress.config import load_config, preflight
    from srcompress.infra.config import ConfigError

    try:
        cfg = load_config(config, overrides)
        if machine:
            preflight(cfg)
        return cfg
    except ConfigError as exc:
        _fail(str(exc), 2)


@config_app.command("show")
def config_show(config: str = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
                docs: bool = typer.Option(False, "--docs", help="Also list every key with its description.")) -> None:
    """Print the resolved config (secrets redacted) and its hash."""
    from srcompress.config import SrConfig
    from srcompress.infra.config import field_docs, redact

    cfg = _load(config, overrides, machine=False)
    typer.echo(yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False, default_flow_style=None).rstrip())
    typer.echo(f"# config hash: {cfg.config_hash()}")
    for section in SrConfig.model_fields:
        typer.echo(f"# {section} hash: {getattr(cfg, section).config_hash()}")
    if docs:
        for key, text in field_docs(SrConfig).items():
            typer.echo(f"# {key}: {text}")


@app.command()
def run(config: str = ConfigOpt, workdir: Optional[Path] = typer.Option(None, help="Work dir (default runs/<run.name>)."),
        until: Optional[str] = typer.Option(None, help="Stop after this step."),
        summary: Optional[Path] = typer.Option(None, help="Write the run summary JSON here."),
        overrides: Optional[list[str]] = SetOpt,
        dry_run: bool = typer.Option(False, "--dry-run", help="Compute nothing: say which steps are cached and which "
                                     "would run, and why (changed config fields, inputs, code version)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress lines (step/total, loss, ETA) "
                                      "of the running steps on stderr: every 10% or 15 s on a terminal, every 25% "
                                      "in logs.")) -> None:
    """Run the compression DAG on a config."""
    from srcompress.config import STEPS

    if until is not None and until not in STEPS:  # before any server or process starts
        _fail(f"--until must be one of: {', '.join(STEPS)}", 2)
    if dry_run:
        for line in dry_run_lines(_pipeline(config, overrides, workdir, until, summary, dry_run=True)):
            typer.echo(line)
        return
    result = _pipeline(config, overrides, workdir, until, summary, progress=progress)
    _human_summary("srcompress run", result, summary)


@contextlib.contextmanager
def _progress(cfg, workdir: Path, enabled: bool):
    """Progress lines read from the step runs' metrics while the flow runs (infra/progress.py)."""
    if not enabled:
        yield
        return
    from srcompress.infra.progress import ProgressWatcher, Tracked
    from srcompress.infra.tracking import resolve_tracking_uri

    d = cfg.distill
    tracked = {"search_pruning": Tracked("loss", cfg.search.steps),  # what each step's ranks log per step
               "distill_latent": Tracked("stage1.loss", d.stage1.steps),
               "distill_pixel": Tracked("stage2.loss", d.stage2.steps)}
    watcher = ProgressWatcher(resolve_tracking_uri(cfg.tracking, workdir), tracked,
                              lambda line: typer.echo(line, err=True), tty=sys.stderr.isatty()).start()
    try:
        yield
    finally:
        watcher.stop()


def _start_prefect(workdir: Path):
    """Prefect's settings, then its local API started in the background while this process imports the flow and
    MLflow (infra/orchestration.start_local_api); returns the wait for it."""
    from srcompress.infra.orchestration import configure_prefect, start_local_api
    from srcompress.infra.tracking import preload

    configure_prefect(workdir)  # before prefect is imported
    wait = start_local_api()
    preload()  # MLflow's import while the API boots
    return wait


def _watchdog() -> None:
    """Every process this run starts (Prefect's embedded server, Ray) ends with it, even on kill -9."""
    import atexit

    from srcompress.infra.supervise import start_watchdog

    atexit.register(start_watchdog())  # registered first, so it runs after Prefect's own exit handlers


def registered_lines(result: dict) -> list[str]:
    """What the register step did, for a person: the version, its aliases, the gate's decision and the check that
    decided it, and the two commands that serve and load that version."""
    reg = (result.get("steps") or {}).get("register")
    if not reg:
        return []
    extra, uri = reg["extra"], reg["uri"]
    gate = extra.get("gate", {})
    failed = [c for c in gate.get("checks", []) if c.get("pass") is False]
    decided = "; ".join(f"{c['metric']} {c['new']:.4g} vs {c['champion']:.4g} (worse by {c['worse_by']:.3g}, "
                        f"tolerance {c['tolerance']:.3g})" if "new" in c else f"{c['metric']} missing on "
                        f"{c['missing_on']}" for c in failed)
    env = f"MLFLOW_TRACKING_URI={result['tracking_uri']} "
    return [f"registered: {uri} (aliases: {', '.join(extra.get('aliases', []))})",
            f"gate:   {'promoted to champion' if gate.get('promote') else 'not promoted'} — {gate.get('reason', '')}"
            + (f" [{decided}]" if decided else ""),
            f"serve:  {env}mlflow models serve -m {uri} --env-manager local -p 5001",
            f"load:   {env}python -c \"import mlflow; m = mlflow.pyfunc.load_model('{uri}')\""]


@app.command()
def explain(step: str = typer.Argument(..., help="A DAG step (srcompress run --until's names)."),
            config: str = ConfigOpt, workdir: Optional[Path] = typer.Option(None, help="Work dir (default runs/<run.name>)."),
            overrides: Optional[list[str]] = SetOpt) -> None:
    """Whether STEP is cached for this config, or why it would run (a dry run up to it: nothing is computed)."""
    from srcompress.config import STEPS

    if step not in STEPS:
        _fail(f"STEP must be one of: {', '.join(STEPS)}", 2)
    for line in dry_run_lines(_pipeline(config, overrides, workdir, step, None, dry_run=True), only=step):
        typer.echo(line)


def _pipeline(config: str, overrides, workdir: Path | None, until: str | None, summary: Path | None, *,
              dry_run: bool = False, progress: bool = False) -> dict:
    """The compression flow as the CLI runs it: config checked, watchdog, Prefect's API started while the flow
    and MLflow load, progress lines while it runs; an unreachable store exits 3."""
    cfg = _load(config, overrides)
    workdir = (workdir or Path("runs") / cfg.run.name).resolve()
    _watchdog()
    api_ready = _start_prefect(workdir)
    from srcompress.flows.compress import run_pipeline
    from srcompress.infra.store import StoreError

    try:
        api_ready()
        with _progress(cfg, workdir, progress and not dry_run):
            return run_pipeline(cfg, workdir, until=until, summary=summary, dry_run=dry_run)
    except StoreError as exc:
        _fail(f"artifact store error: {exc}", 3)


def dry_run_lines(result: dict, only: str | None = None) -> list[str]:
    """The dry run for a person: the looked-up steps cached (their keys), then the first that would run and why;
    with ``only``, that step (and its variants: degrade_holdout, phase-ablation and route stages) alone."""
    would = result.get("would_run")
    lines = [f"srcompress dry run up to {result['until']} (store {result['store']}): nothing computed or recorded"]
    shown = [n for n in result["cached"] if only is None or n == only or n.startswith(only + "_")]
    lines += [f"  {n:<24s} cached {result['cached'][n]['cache_key'][:12]}" for n in shown]
    if would is not None:
        step = would["step"]
        if only is not None and not (step == only or step.startswith(only)):
            lines.append(f"  {only}: not looked up: {step} comes before it and would run (key "
                         f"{would['cache_key'][:12]}):")
        else:
            lines.append(f"  {step:<24s} would run (key {would['cache_key'][:12]}):")
        lines += [f"      {r}" for r in would["reasons"]]
        if only is None and would.get("invalidates"):
            lines.append(f"  after it, not looked up (they depend on what {step} produces): "
                         + ", ".join(would["invalidates"]))
    elif only is not None and not shown:
        lines.append(f"  {only}: not a step of this config's DAG (disabled?)")
    elif only is None:
        lines.append("  everything is cached: the run would compute nothing")
    return lines


def _human_summary(title: str, result: dict, summary: Path | None) -> None:
    """A few lines for a person: what ran, what was cached, where things are, then the table itself.
    The full machine-readable record goes to ``--summary``."""
    outcomes = result.get("outcomes", {})
    ran = sum(1 for v in outcomes.values() if v == "ran")
    typer.echo(f"{title}: {len(outcomes)} steps, {ran} ran, {len(outcomes) - ran} cached")
    for name, outcome in outcomes.items():
        typer.echo(f"  {name:<20s} {outcome}")
    typer.echo(f"store:  {result['store']}")
    typer.echo(f"MLflow: {result['tracking_uri']} (experiment {result['experiment_id']}, "
               f"run {result['parent_run_id']})")
    if result.get("prefect_flow_run_id"):
        typer.echo(f"Prefect: flow run {result['prefect_flow_run_id']}")
    for line in registered_lines(result):
        typer.echo(line)
    if result.get("table"):
        typer.echo(f"table:  {result['table']}\n")
        sections = Path(result["table"]).read_text().split("\n## ")
        typer.echo(sections[0].rstrip())  # the table; then the retention of the teacher's gain, when scored
        for sec in sections[1:]:
            if sec.startswith("Retention"):
                typer.echo("\n## " + sec.rstrip())
    if summary:
        typer.echo(f"\nsummary: {summary}")


@app.command()
def evaluate(config: str = ConfigOpt, data: Optional[str] = typer.Option(None, help="HR folder, paired folder (hr/ + lr/), LR-only folder, pairs manifest .json, or s3:// prefix."),
             models: Optional[str] = typer.Option(None, help="Comma-separated: bicubic,teacher (bicubic is always included; pruned/searched/student* need a run's distill outputs)."),
             workdir: Optional[Path] = typer.Option(None, help="Work dir (default runs/<run.name>)."),
             summary: Optional[Path] = typer.Option(None, help="Write the evaluation summary JSON here."),
             list_metrics: bool = typer.Option(False, "--list-metrics", help="List metrics and whether they can run here."),
             overrides: Optional[list[str]] = SetOpt) -> None:
    """Evaluate bicubic and the requested models on a dataset: metrics, efficiency, grids, MLflow records."""
    extra = [f"evaluate.models={json.dumps([m.strip() for m in models.split(',') if m.strip()])}"] if models else []
    cfg = _load(config, list(overrides or []) + extra, machine=not list_metrics)
    if list_metrics:
        _list_metrics(cfg)
        return
    if not data:
        _fail("--data is required (a folder, a pairs manifest .json, or an s3:// prefix)", 2)
    if not data.startswith("s3://") and not Path(data).expanduser().exists():
        _fail(f"--data {data}: no such file or folder", 2)
    workdir = (workdir or Path("runs") / cfg.run.name).resolve()
    _watchdog()
    api_ready = _start_prefect(workdir)
    from srcompress.flows.evaluate import run_evaluation
    from srcompress.infra.store import StoreError

    try:
        api_ready()
        result = run_evaluation(cfg, workdir, data if data.startswith("s3://") else str(Path(data).expanduser().resolve()),
                                summary=summary)
    except StoreError as exc:
        _fail(f"artifact store error: {exc}", 3)
    _human_summary("srcompress evaluate", result, summary)


def _list_metrics(cfg) -> None:
    from srcompress.models.iqa import MetricUnavailable, build_metric, metric_names
    from srcompress.tasks.evaluate.step import metric_env

    env = metric_env(cfg.evaluate)
    for name in metric_names():
        try:
            m = build_metric(name, env)
            typer.echo(f"{name:10s} ok  ({m.info.mode}, {'lower' if m.info.lower_better else 'higher'} is better, {m.info.backend})")
        except MetricUnavailable as exc:
            typer.echo(f"{name:10s} {exc}")


@app.command()
def plan(config: str = ConfigOpt,
         keep: Optional[int] = typer.Option(None, "--keep", min=1, help="Keep N blocks, evenly spaced (first and last included); default: the config's search.n of every search.m blocks (the first n of each group)."),
         mask: Optional[str] = typer.Option(None, "--mask", help="The kept blocks from a search result.json (its \"mask\") or a JSON 0/1 list: a path, file:// or s3:// URI, or the list itself."),
         as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
         size: int = typer.Option(512, "--size", min=16, help="Square input size in pixels (one untiled pass)."),
         budget: Optional[str] = typer.Option(None, "--budget", help="gmacs=N or params=N (e.g. params=341e6): choose the N:M and, with the tiny VAE, its width whose student costs within 5 percent below N at --size (instead of the config's search.n:m)."),
         overrides: Optional[list[str]] = SetOpt) -> None:
    """Params and GMACs of TSD-SR's SD3-medium teacher and its student, counted on the meta device (no weights)."""
    cfg = _load(config, overrides, machine=False)
    bootstrap_unet = cfg.teacher.source == "bootstrap" and (cfg.teacher.bootstrap.multistep is not None
                                                            or cfg.teacher.bootstrap.unet is not None)
    folder_unet = cfg.teacher.kind == "auto" and (Path(cfg.teacher.source) / "unet").is_dir()
    if cfg.teacher.kind in ("unet", "multistep") or bootstrap_unet or folder_unet:
        _fail(f"plan: only SD3-transformer teachers are supported (TSD-SR / TinySR); {config} has a UNet teacher "
              f"(teacher.kind: {cfg.teacher.kind}), whose students plan does not count yet", 2)
    if sum(v is not None for v in (keep, mask, budget)) > 1:
        _fail("plan: give one of --keep, --mask, --budget", 2)
    import logging

    from srcompress.models.student import plan as planning

    logging.getLogger("diffusers").setLevel(logging.ERROR)  # the meta build's dtype-cast notice is noise here
    n_blocks = int(planning.SD3_MEDIUM_TRANSFORMER["num_layers"])
    try:
        if mask is not None:
            chosen = {"mask": planning.parse_mask(_read_mask(mask, cfg), n_blocks, source=f"--mask {mask}")}
            how = f"--mask {mask}"
        elif keep is not None:
            chosen = {"keep": planning.spread_keep(n_blocks, keep)}
            how = f"--keep {keep}: evenly spaced"
        shape, choice = cfg.student_shape("sd3"), None
        if budget is not None or (cfg.search.budget is not None and keep is None and mask is None):
            choice = _budget_choice(budget, cfg, size)
            n, m = choice["n"], choice["m"]
            shape = shape.with_vae_width(choice["vae_width"])
            chosen = {"keep": planning.nm_keep(n_blocks, n, m)}
            how = (f"{'--budget ' + budget if budget else 'search.budget'}: {n}:{m}"
                   + (f", tiny VAE width {choice['vae_width']}" if choice["vae_width"] is not None else "")
                   + f", modelled at {choice['of_budget']:.1%} of the budget")
        elif keep is None and mask is None:
            n, m = cfg.search.n, cfg.search.m
            chosen = {"keep": planning.nm_keep(n_blocks, n, m)}
            how = f"search {n}:{m} from the config: the first {n} of every {m}"
        from srcompress.models.student.shape import final_student

        # the config's student shape, built by the builder the distillation steps use: plan counts the student
        # the DAG builds (with the compress_vae step's VAE when vae.enabled)
        report = planning.plan(planning.SD3_MEDIUM_TRANSFORMER, planning.SD3_MEDIUM_VAE, size=size,
                               text_tokens=planning.TSDSR_TEXT_TOKENS,
                               build=lambda teacher, m: final_student(teacher, m, shape), **chosen)
        if choice is not None:
            report["budget"] = choice
    except (ValueError, OSError) as exc:
        _fail(str(exc), 2)
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    _print_plan(report, how)


def _budget_choice(spec: str | None, cfg, size: int) -> dict:
    """``--budget gmacs=N | params=N`` (or, without it, the config's ``search.budget``): the N:M (and tiny-VAE
    width) ``models/student/budget.py`` chooses for the config's student of SD3-medium — the choice the search
    step makes for the same config and teacher."""
    from srcompress.models.student import plan as planning
    from srcompress.models.student.budget import METRICS, budget_choice

    b, shape = cfg.search.budget, cfg.student_shape("sd3")
    if spec is None:
        metric, amount, tolerance, widths, size = b.metric, b.value, b.tolerance, b.vae_widths, b.size
    else:
        metric, _, value = spec.partition("=")
        try:
            amount = float(value)
        except ValueError:
            raise ValueError(f"--budget {spec}: expected gmacs=N or params=N") from None
        if metric not in METRICS:
            raise ValueError(f"--budget {spec}: expected gmacs=N or params=N")
        tolerance = 0.05
        widths = sorted({16, 32, 48, 64, shape.tiny_vae.width}) if shape.tiny_vae is not None else None
    return budget_choice(planning.build_teacher(), shape, metric, amount, size, tolerance, widths)


def _read_mask(spec: str, cfg) -> bytes | str:
    """A mask given inline (``[1,0,…]``), as a local path / file:// URI, or as an s3:// URI (read through the
    config's store settings: endpoint, credentials chain)."""
    if spec.lstrip().startswith("["):
        return spec
    if spec.startswith("s3://"):
        from srcompress.infra.store import StoreError, open_store

        root, _, name = spec.rpartition("/")
        try:
            return open_store(cfg.store.model_copy(update={"uri": root}), ".").get_bytes(name)
        except StoreError as exc:
            raise ValueError(f"--mask {spec}: {exc}") from None
    if spec.startswith("file://"):
        from urllib.parse import unquote, urlparse

        spec = unquote(urlparse(spec).path)
    elif "://" in spec:
        raise ValueError(f"--mask {spec}: unsupported scheme (a path, file:// or s3://)")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(f"--mask {spec}: no such file")
    return path.read_bytes()


def _print_plan(r: dict, how: str) -> None:
    def row(label: str, part: dict, note: str = "") -> None:
        lin = part.get("gmacs_no_attention")
        typer.echo(f"  {label:<46s} {part['params'] / 1e6:>10,.1f}M {part['gmacs']:>10,.1f} "
                   f"{'' if lin is None else format(lin, ',.1f'):>10s}{('   ' + note) if note else ''}")

    tv, tt, sb, sv = r["teacher_vae"], r["teacher_transformer"], r["student_backbone"], r["student_vae"]
    c, hw = r["latent"][0], r["latent"][1:]
    typer.echo(f"srcompress plan: TSD-SR's SD3-medium teacher and its student at {r['size']}x{r['size']} "
               f"(latent {c}x{hw[0]}x{hw[1]}, {r['text_tokens']} text tokens), counted on the meta device")
    typer.echo(f"kept blocks: {len(r['kept'])} of {r['blocks']} ({how}): {' '.join(map(str, r['kept']))}\n")
    if "budget" in r:
        b = r["budget"]
        from srcompress.models.student.budget import fmt_cost

        typer.echo(f"budget: {fmt_cost(b['metric'], b['budget'])} at {b['size']} px; chose {b['n']}:{b['m']}"
                   + (f", tiny VAE width {b['vae_width']}" if b["vae_width"] is not None else "")
                   + " (the least compression within 5% below it; M = 4 first, as TinySR)\n")
    typer.echo(f"  {'':<46s} {'params':>11s} {'GMACs':>10s} {'w/o attn':>10s}")
    row("teacher VAE (AutoencoderKL, encoder + decoder)", tv,
        f"encode {tv['encode_gmacs']:,.1f} + decode {tv['decode_gmacs']:,.1f}")
    row(f"teacher transformer ({tt['blocks']} blocks)", tt)
    row("teacher total", r["teacher"])
    kind = "image-only" if sb.get("image_only") else ("streamlined" if sb["streamlined"] else "plain")
    row(f"student transformer ({sb['blocks']} blocks, {kind})", sb)
    vae_label = ("student tiny VAE (separable AutoencoderTiny)" if sv["tiny"] else
                 "student VAE (teacher's, compressed)" if sv.get("compressed") else "student VAE (the teacher's)")
    row(vae_label, sv, f"encode {sv['encode_gmacs']:,.1f} + decode {sv['decode_gmacs']:,.1f}")
    row("student total", r["student"])
    typer.echo(f"  {'reduction':<46s} {'x' + format(r['reduction']['params'], '.2f'):>11s} "
               f"{'x' + format(r['reduction']['gmacs'], '.2f'):>10s}")
    ref = r["tinysr_reported"]
    typer.echo(f"  {'TinySR final student (Table 1, reported)':<46s} {ref['params'] / 1e6:>10,.1f}M "
               f"{'':>10s} {ref['gmacs']:>10,.1f}   its counter: no attention matmuls; {ref['speedup']}x faster than TSD-SR")
    typer.echo(f"\n{r['protocol']}")


COLOR_FIXES = ("wavelet", "adain", "none")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MAX_INPUT_PIXELS = 100_000_000  # the evaluate step's decompression-bomb guard


@app.command()
def upscale(model: Path = typer.Option(..., "--model", "-m", help="A published student folder (student.json) or a teacher folder (teacher.json / transformer/ / unet/)."),
            inputs: Optional[list[Path]] = typer.Option(None, "--input", "-i", help="LR image or folder of images (repeatable); any size."),
            more: Optional[list[Path]] = typer.Argument(None, help="More LR images or folders (their images, not subfolders).", show_default=False),
            output: Path = typer.Option(..., "--output", "-o", help="Output .png (one input) or a folder (<input name>.png in it)."),
            scale: int = typer.Option(4, "--scale", min=1, help="Upscaling factor."),
            tile: Optional[int] = typer.Option(None, "--tile", min=1, help="Latent tile size; default: the model's own (student.json / teacher.json), capped at the positional embedding."),
            tile_overlap: Optional[int] = typer.Option(None, "--tile-overlap", min=0, help="Latent tile overlap; default: the model's own."),
            color_fix: str = typer.Option("wavelet", "--color-fix", help="wavelet | adain | none (against the bicubic-upsampled input)."),
            device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
            no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar.")) -> None:
    """Super-resolve images with a student or teacher folder: LR in, xscale PNG out (Gaussian-blended latent tiles)."""
    if color_fix not in COLOR_FIXES:
        _fail(f"--color-fix must be one of: {', '.join(COLOR_FIXES)}", 2)
    model = model.expanduser()
    if not model.is_dir():
        _fail(f"--model {model}: no such folder", 2)
    targets = _upscale_targets(_expand_inputs(list(inputs or []) + list(more or [])), output.expanduser())
    from srcompress.models.device import DeviceError, resolve_device

    try:
        dev = resolve_device(device, "--device")
    except DeviceError as exc:
        _fail(str(exc), 2)
    for src, _ in targets:  # every input decodes before anything is loaded or written
        _decode_lr(src)
    sr_model, up = _load_upscaler(model, dev, scale, tile, tile_overlap, color_fix)
    import torch
    from tqdm import tqdm

    for src, dest in targets:
        lr = _decode_lr(src)
        h, w = lr.shape[-2:]
        with tqdm(total=_tile_count(up, h, w), desc=src.name, unit="tile", disable=no_progress) as bar, \
                _tile_progress(sr_model, bar.update), torch.no_grad():
            sr = up(lr)
        try:
            _write_png(_to_uint8(sr), dest)
        except OSError as exc:
            _fail(f"--output {dest}: cannot write: {exc}", 3)
        typer.echo(f"{src} ({w}x{h}) -> {dest} ({sr.shape[-1]}x{sr.shape[-2]})")


def _expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; a folder becomes its image files (sorted by name, one level). At least one image."""
    out: list[Path] = []
    for p in (q.expanduser() for q in paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES | {".png"})
            if not found:
                _fail(f"--input {p}: no images in this folder", 2)
            out += found
        else:
            out.append(p)
    if not out:
        _fail("no input: give LR images or folders (arguments or --input)", 2)
    return out


def _upscale_targets(inputs: list[Path], output: Path) -> list[tuple[Path, Path]]:
    """(input, output PNG) pairs: ``--output x.png`` for one input, else a folder of ``<stem>.png``."""
    for src in inputs:
        if not src.is_file():
            _fail(f"--input {src}: no such file", 2)
    suffix = output.suffix.lower()
    if suffix == ".png" and not output.is_dir():
        if len(inputs) > 1:
            _fail(f"--output {output}: {len(inputs)} inputs need an output folder, not one .png", 2)
        return _not_onto_inputs([(inputs[0], output)])
    if suffix in IMAGE_SUFFIXES and not output.is_dir():
        _fail(f"--output {output}: outputs are PNG: name a .png file or a folder", 2)
    if output.exists() and not output.is_dir():
        _fail(f"--output {output}: exists and is not a folder", 2)
    dests = [output / f"{src.stem}.png" for src in inputs]
    dup = sorted({d.name for d in dests if dests.count(d) > 1})
    if dup:
        _fail(f"--output {output}: several inputs would write {', '.join(dup)}; give one input per name", 2)
    return _not_onto_inputs(list(zip(inputs, dests)))


def _not_onto_inputs(pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    for src, dest in pairs:
        if dest.resolve() == src.resolve():
            _fail(f"--output {dest}: would overwrite its input; choose another name or folder", 2)
    return pairs


def _decode_lr(path: Path):
    """The image as a (1, 3, h, w) float tensor in [0, 1] (the pipeline's decoder: EXIF, alpha, 16-bit)."""
    import torch

    from srcompress.tasks.common.ingest import BadImage, decode_image

    try:
        rgb = decode_image(path.read_bytes(), MAX_INPUT_PIXELS).rgb
    except BadImage as exc:
        _fail(f"--input {path}: cannot decode the image: {exc}", 2)
    except OSError as exc:
        _fail(f"--input {path}: cannot read: {exc}", 2)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0


def _load_upscaler(folder: Path, device, scale: int, tile: int | None, overlap: int | None, color_fix: str):
    from srcompress.models.upscalers import DiffusionSR

    try:
        if (folder / "student.json").is_file():
            from srcompress.models.student.student import load_student

            model, name = load_student(folder, device=device), "student"
        elif (folder / "teacher.json").is_file() or (folder / "transformer").is_dir() or (folder / "unet").is_dir():
            from srcompress.models.teachers.loader import load_teacher

            model, name = load_teacher(folder, device=device), "teacher"
        else:
            _fail(f"--model {folder}: neither a student folder (student.json) nor a teacher folder "
                  "(teacher.json, transformer/ or unet/)", 2)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"--model {folder}: cannot load: {exc}", 2)
    up = DiffusionSR(model, scale=scale, name=name, tile="model" if tile is None else tile,
                     tile_overlap="model" if overlap is None else overlap, color_fix=color_fix)
    return model, up


def _tile_count(up, h: int, w: int) -> int:
    """How many latent tiles ``up`` runs on an h x w input (as ``models/teachers/tiling.py`` lays them out)."""
    from srcompress.models.teachers.tiling import tile_starts

    lat = [-(-(s * up.scale) // up.multiple) * up.multiple // up.model.latent_factor for s in (h, w)]
    if not up.tile or max(lat) <= up.tile:
        return 1
    rows, cols = (len(tile_starts(max(s, up.tile), up.tile, up.tile_overlap)) for s in lat)
    return rows * cols


@contextlib.contextmanager
def _tile_progress(model, tick):
    """Call ``tick(n)`` after each ``restore_tile`` call on n tiles (an instance attribute shadows the method
    for this block only; ``DiffusionSR`` looks ``restore_tile`` up on the model at call time)."""
    inner = model.restore_tile

    def counted(z):
        out = inner(z)
        tick(int(z.shape[0]))
        return out

    model.restore_tile = counted
    try:
        yield
    finally:
        del model.restore_tile


def _to_uint8(sr):
    """(1, 3, H, W) in [0, 1] → (H, W, 3) uint8, rounded to nearest."""
    import torch

    return (sr[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _write_png(rgb, dest: Path) -> None:
    """Write atomically: a temp file in the destination folder, fsynced, then ``os.replace`` onto ``dest``."""
    import os
    import tempfile

    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(rgb).save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an output image gets the usual permissions
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@assets_app.command("fetch")
def assets_fetch() -> None:
    """Fetch the official NIQE parameters from the basicsr sdist (package registry; sha256-pinned)."""
    from srcompress.infra.assets import AssetUnavailable, fetch_niqe_params

    try:
        typer.echo(f"niqe: {fetch_niqe_params()}")
    except AssetUnavailable as exc:
        _fail(str(exc), 4)


@assets_app.command("show")
def assets_show() -> None:
    """Where each offline asset lives and whether it is present."""
    from srcompress.infra.assets import status

    for s in status():
        typer.echo(f"{s.name}: {'present' if s.present else 'missing'} at {s.path} (source: {s.source})")


@app.command()
def lineage(ref: str = typer.Argument(..., help="models:/<name>@<alias>, models:/<name>/<version>, or an MLflow run id."),
            tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else the config's)."),
            config: Optional[str] = typer.Option(None, "--config", "-c", help="Config whose tracking/store settings to use."),
            workdir: Optional[Path] = typer.Option(None, help="Work dir of the config's default sqlite/store (default runs/<run.name>)."),
            verify: bool = typer.Option(False, "--verify", help="Re-check every recorded digest against the artifact store."),
            as_json: bool = typer.Option(False, "--json", help="Print the chain as JSON.")) -> None:
    """Where a model came from: dataset → pairs → teacher → latents → redundancy → mask → stages → evaluation."""
    from srcompress.infra import lineage as lin
    from srcompress.infra.config import redact
    from srcompress.models_cli import tracking_uri_for

    cfg = _load(config, None, machine=False) if config else None
    work = workdir or (Path("runs") / cfg.run.name if cfg else None)
    uri = tracking_uri_for("lineage", tracking_uri, cfg, work)
    try:
        chain = lin.lineage(ref, uri)
    except (LookupError, ValueError) as exc:
        _fail(f"lineage: {exc}", 2)
    except Exception as exc:  # unreachable server, unknown name …
        _fail(f"lineage: {redact(uri, 'uri')}: {type(exc).__name__}: {exc}", 3)
    problems = None
    if verify:
        from srcompress.infra.store import StoreConfig, open_store

        store_cfg = cfg.store if cfg is not None else StoreConfig()
        store = open_store(store_cfg.model_copy(update={"uri": chain["store"]}), work or Path("."))
        problems = lin.verify(chain, store)
    if as_json:
        typer.echo(json.dumps({**chain, **({"verify": problems} if problems is not None else {})}, indent=1))
    else:
        typer.echo(lin.render_tree(chain))
        if problems is not None:
            typer.echo("verify: every recorded object is present and unchanged" if not problems
                       else "verify: FAILED\n  " + "\n  ".join(problems))
    if problems:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
