"""Named mutations of core behaviours: each is applied to a scratch copy of the repository, the tests that own
the behaviour are run against that copy, and the mutation must be *caught* (some owning test fails).

    .venv/bin/python -m tests.mutations                 # every mutation, a table at the end
    .venv/bin/python -m tests.mutations --only gate-direction tile-blending
    .venv/bin/python -m tests.mutations --list

A mutation that survives names a test that passes with its feature removed. The scratch copy is imported in
place of the installed package: its ``srcompress/`` gets the layers linked in (``flows tasks models infra
configs``, as setup.py maps them), and the editable install's finder sits at the end of ``sys.meta_path``, so
the copy wins in pytest, in the CLI and watchdog subprocesses the tests start (their working directory is the
copy) and in Ray workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("flows", "tasks", "models", "infra")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str   # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids / paths that own the behaviour
    what: str


MUTATIONS = [
    Mutation("vae-prune-criterion", "models/student/vae_prune.py",
             "order = sorted(range(sp.size), key=lambda c: (-float(score[c]), c))",
             "order = sorted(range(sp.size), key=lambda c: (float(score[c]), c))",
             ("tests/models/test_vae_prune.py",),
             "VAE channel pruning keeps the least important channels"),
    Mutation("vae-sepconv-init", "models/student/vae_prune.py",
             "            if src is not None:\n                _rank1_init(sep, src)\n",
             "            pass\n",
             ("tests/models/test_vae_prune.py",),
             "the separable encoder starts from random factors, not the pruned dense kernels"),
    Mutation("vae-resume", "tasks/vae/step.py",
             "    state = ckpt.load()\n",
             "    state = None\n",
             ("tests/tasks/test_vae.py::test_an_interrupted_compression_resumes_from_its_checkpoint",),
             "an interrupted compress_vae step starts over instead of resuming"),
    Mutation("vae-refit-skipped", "tasks/vae/step.py",
             "    if cfg.refit:\n",
             "    if False:\n",
             ("tests/tasks/test_vae.py::test_refit_and_the_linear_decoder_restore_a_pruned_constructed_vae",),
             "vae.refit does not re-fit the pruned encoder"),
    Mutation("vae-linear-decoder-unrealised", "tasks/vae/step.py",
             "        realize_decoder(vae, lin)\n",
             "        pass\n",
             ("tests/tasks/test_vae.py::test_refit_and_the_linear_decoder_restore_a_pruned_constructed_vae",),
             "vae.decoder_init=linear fits a decoder and drops it"),
    Mutation("vae-schedule-ignored", "models/student/vae_train.py",
             "            group[\"lr\"] = scheduled_lr(base, self.steps[phase], total, self.cfg.schedule)\n",
             "            group[\"lr\"] = base\n",
             ("tests/models/test_vae_prune.py::test_the_trainer_applies_the_schedule_per_phase",),
             "vae.schedule=one_cycle trains at the constant rate"),
    Mutation("stage2-train-decoder-ignored", "tasks/distill/worker.py",
             "        if (st.tiny_vae or st.compressed_vae) and s2.train_decoder:",
             "        if st.tiny_vae or st.compressed_vae:",
             ("tests/tasks/test_distill.py::test_the_final_student_decodes_with_the_compressed_vae",),
             "distill.stage2.train_decoder=false still trains the decoder"),
    Mutation("vae-attention-not-identity", "models/teachers/vae_init.py",
             "            m.to_out[0].weight.zero_()\n",
             "            pass\n",
             ("tests/models/test_vae_init.py::test_the_construction_holds_with_sd3s_mid_block_attention",),
             "the pca construction leaves the VAE's mid-block attention random"),
    Mutation("channels-last-ignored", "models/upscalers.py",
             "            model.vae.to(memory_format=torch.channels_last)\n",
             "            pass\n",
             ("tests/models/test_upscalers.py::test_channels_last_changes_the_layout_not_the_output",),
             "evaluate.inference.channels_last leaves the VAE's layout as it was"),
    Mutation("vae-decoder-frozen-in-stage2", "tasks/distill/worker.py",
             "        if (st.tiny_vae or st.compressed_vae) and s2.train_decoder:",
             "        if st.tiny_vae and s2.train_decoder:",
             ("tests/tasks/test_distill.py::test_the_final_student_decodes_with_the_compressed_vae",),
             "stage 2 leaves the compressed VAE's decoder untrained"),
    Mutation("mask-decision", "models/pruning/masks.py",
             "        best = self.ema_logits.argmax(-1)\n",
             "        best = torch.zeros_like(self.ema_logits.argmax(-1))\n",
             ("tests/models/test_pruning.py",
              "tests/tasks/test_search.py::test_the_learned_search_drops_the_blocks_that_do_nothing"),
             "the searched mask ignores what the gates learned (always the first option)"),
    Mutation("tinysr-decision", "models/pruning/masks.py",
             "            k = 1 if top[1] else int(row.argmax())",
             "            k = 1",
             ("tests/models/test_pruning.py",),
             "the TinySR decision ignores the pair gates (always N of M per group)"),
    Mutation("budget-vae-width", "models/student/budget.py",
             "        s = shape.with_vae_width(width)\n",
             "        s = shape\n",
             ("tests/models/test_budget.py",),
             "the budget prices every tiny-VAE width as the configured one"),
    Mutation("budget-width-not-built", "tasks/distill/step.py",
             "        cfg = cfg.with_vae_width(width)\n",
             "        pass\n",
             ("tests/tasks/test_distill.py::test_two_ranks_tiny_vae_phase_adapter_gan_and_a_budget",),
             "the distillation builds distill.tiny_vae.width instead of the width the budget chose"),
    Mutation("image-only-modulation", "models/student/tinysr.py",
             "        t = torch.full((1,), float(timestep), dtype=p.dtype, device=p.device)",
             "        t = torch.full((1,), float(timestep) - 1.0, dtype=p.dtype, device=p.device)",
             ("tests/models/test_tinysr.py",),
             "the image-only student caches its modulation at another timestep"),
    Mutation("published-extra-tensors", "models/student/tinysr.py",
             'self.pos_embed.register_buffer("pos_embed", self.pos_embed.pos_embed, persistent=False)',
             'self.pos_embed.register_buffer("pos_embed", self.pos_embed.pos_embed, persistent=True)',
             ("tests/models/test_tinysr.py",),
             "the published image-only student stores a 57M-number table besides its parameters"),
    Mutation("ms-ssim-combination", "models/iqa/native.py",
             '    if method == "wtd_sum":\n',
             '    if method == "no such method":\n',
             ("tests/models/test_iqa.py",),
             "MS-SSIM's weighted-sum combination silently computes the product"),
    Mutation("redaction", "infra/config.py",
             "    text = _URI_USERINFO.sub(lambda m: f\"{m['scheme']}***@\", text)\n",
             "",
             ("tests/infra/test_config.py", "tests/infra/test_tracking.py"),
             "user:password@ in URIs is no longer redacted"),
    Mutation("cache-verification", "infra/store/local.py",
             "        actual = sha256_file(self._path(key))\n",
             "        actual = info.sha256\n",
             ("tests/infra/test_store.py",),
             "verify() trusts the digest record instead of re-hashing the object"),
    Mutation("checkpoint-resume", "models/teachers/bootstrap.py",
             "    start = int(resume[\"step\"])\n",
             "    start = 0\n",
             ("tests/models/test_bootstrap_metrics.py", "tests/models/test_multistep.py"),
             "a resumed bootstrap (one-step or multi-step) restarts at step 0"),
    Mutation("watchdog", "infra/supervise.py",
             "    procs = _alive(seen)\n",
             "    procs = []\n",
             ("tests/reliability/test_watchdog.py",),
             "the watchdog ends nothing when the CLI dies"),
    Mutation("streamlining-exactness", "models/student/streamline.py",
             "            t = torch.full((1,), float(timestep), dtype=p.dtype, device=p.device)",
             "            t = torch.full((1,), float(timestep) - 1.0, dtype=p.dtype, device=p.device)",
             ("tests/models/test_student.py",),
             "the cached modulation is computed at another timestep"),
    Mutation("accumulation-ignored", "tasks/common/training.py",
             '"gradient_accumulation_steps": self.gradient_accumulation,',
             '"gradient_accumulation_steps": 1,',
             ("tests/tasks/test_search.py::test_learned_search_on_two_deepspeed_ranks_at_zero_2_bf16_with_accumulation",),
             "DeepSpeed never hears of gradient accumulation (the config still says 2)"),
    Mutation("zero-stage-ignored", "tasks/common/training.py",
             '"zero_optimization": {"stage": self.zero_stage}',
             '"zero_optimization": {"stage": min(self.zero_stage, 1)}',
             ("tests/tasks/test_search.py::test_learned_search_on_two_deepspeed_ranks_at_zero_2_bf16_with_accumulation",),
             "ZeRO-2 requested, ZeRO-1 run"),
    Mutation("rank-reuse-off", "infra/ray_cluster.py",
             "            kept = not use_gpu and _keep_ranks(shape, pg, actors)",
             "            kept = False",
             ("tests/infra/test_ray_cluster.py::test_a_flow_runs_consecutive_training_launches_reuse_their_rank_processes",),
             "every training launch starts fresh rank processes"),
    Mutation("rank-reset-skipped", "infra/ray_cluster.py",
             "        _reset_process_group()  # only after a clean end",
             "        pass  # only after a clean end",
             ("tests/infra/test_ray_cluster.py::test_a_flow_runs_consecutive_training_launches_reuse_their_rank_processes",),
             "a reused rank keeps the last launch's process group"),
    Mutation("bitsandbytes-imported", "srcompress/__init__.py",
             '_sys.modules.setdefault("bitsandbytes", None)',
             "pass",
             ("tests/test_layout.py::test_importing_diffusers_after_srcompress_leaves_bitsandbytes_and_inductor_out",),
             "every process that imports diffusers imports bitsandbytes and torch._inductor again"),
    Mutation("dataset-race-not-retried", "infra/tracking.py",
             '    return "datasets" in text and ("UNIQUE constraint failed" in text or "duplicate key value" in text)',
             "    return False",
             ("tests/infra/test_tracking.py::test_two_runs_logging_one_dataset_at_once_both_record_it",),
             "two runs logging one step output at once: the later one fails"),
    Mutation("tile-blending", "models/teachers/tiling.py",
             "            out[..., i : i + tile, j : j + tile] += ys[n * b : (n + 1) * b] * weight\n"
             "            norm[..., i : i + tile, j : j + tile] += weight\n",
             "            out[..., i : i + tile, j : j + tile] = ys[n * b : (n + 1) * b]\n"
             "            norm[..., i : i + tile, j : j + tile] = 1\n",
             ("tests/models/test_tiling.py", "tests/models/test_upscalers.py"),
             "tiles overwrite each other instead of Gaussian blending"),
    Mutation("gate-direction", "tasks/register/gate.py",
             "        worse = (a - b) if _lower_better(metric, new) else (b - a)",
             "        worse = b - a",
             ("tests/tasks/test_register.py::test_gate_lower_is_better_at_the_shipped_tolerance",),
             "lower-is-better metrics compared as higher-is-better"),
    Mutation("gate-missing-metric", "tasks/register/gate.py",
             "            missing.append(f\"{metric} (missing on {where})\")",
             "            pass",
             ("tests/tasks/test_register.py::test_gate_refuses_a_version_missing_a_gated_metric",),
             "a candidate missing a gated metric is promoted"),
    Mutation("degradation-order", "models/degradations/pipeline.py",
             "    a_idx = [i for i, p in enumerate(params) if p.order_a]\n"
             "    b_idx = [i for i, p in enumerate(params) if not p.order_a]\n",
             "    a_idx = [i for i, p in enumerate(params) if not p.order_a]\n"
             "    b_idx = [i for i, p in enumerate(params) if p.order_a]\n",
             ("tests/models/test_degradations_basicsr.py",),
             "the final stage's two orders (resize+sinc → JPEG vs JPEG → resize+sinc) swapped"),
    Mutation("alias-history-skipped", "infra/registry.py",
             "    client.set_registered_model_tag(name, HISTORY_TAG.format(alias=alias), json.dumps(history))\n",
             "",
             ("tests/test_models_cli.py",),
             "an alias move (gate, promote, rollback) is not recorded, so rollback has nothing to replay"),
    Mutation("rollback-replays-nothing", "infra/registry.py",
             "            if stack:\n                stack.pop()\n",
             "            pass\n",
             ("tests/test_models_cli.py",),
             "rollback ignores earlier rollbacks (a second rollback undoes the first instead of going further back)"),
    Mutation("efficiency-not-interleaved", "models/efficiency.py",
             "        for r in range(reps):\n            for n in names[r % len(names):] + names[:r % len(names)]:\n"
             "                times[n].append(timers[n]())\n",
             "        for n in names:\n            for r in range(reps):\n                times[n].append(timers[n]())\n",
             ("tests/models/test_efficiency.py",),
             "models are timed one after the other, so a machine that slows down mid-run favours the first"),
    Mutation("pca-vae-tap-order", "models/teachers/vae_init.py",
             "            d0.weight[k * 4 + t, k, t // 2, t % 2] = 1.0\n",
             "            d0.weight[k * 4 + t, k, t % 2, t // 2] = 1.0\n",
             ("tests/models/test_vae_init.py",),
             "the factor-4 encoder gathers the 2×2 taps transposed (latents no longer the PCA of each cell)"),
    Mutation("pca-vae-decoder-copy", "models/teachers/vae_init.py",
             "    dec.conv_out.weight[:, data:2 * data] = -a * lin.conv_out.weight\n",
             "    dec.conv_out.weight[:, data:2 * data] = a * lin.conv_out.weight\n",
             ("tests/models/test_vae_init.py",),
             "the decoder's conv_out adds the ± channels instead of taking their difference"),
    Mutation("optimiser-betas", "tasks/search/worker.py",
             "    opt = torch.optim.AdamW(model.param_groups(cfg.lr, cfg.weight_decay, cfg.gate_lr_mult))",
             "    opt = torch.optim.AdamW(model.param_groups(cfg.lr, cfg.weight_decay, cfg.gate_lr_mult), betas=(0.8, 0.99))",
             ("tests/test_golden_curves.py",),
             "the search optimiser's betas change (a training-numerics drift)"),
    Mutation("codever-executes-modules", "infra/codever.py",
             "        if pspec is None or pspec.submodule_search_locations is None:\n            return None\n",
             "        if pspec is None:\n            return None\n",
             ("tests/infra/test_codever.py", "tests/test_startup.py"),
             "computing a code version imports the modules it reads (a cached rerun loads torch and diffusers)"),
    Mutation("dry-run-computes", "infra/dryrun.py",
             '        if not tags.get("cache_hit", False):\n            raise WouldRun(step, params, tags)\n',
             '        if False:\n            raise WouldRun(step, params, tags)\n',
             ("tests/flows/test_dry_run.py",),
             "a dry run lets a step without a cached result compute"),
    Mutation("dry-run-names-nothing", "infra/dryrun.py",
             "    changed = sorted(k for k in set(now_params) | set(prev_params) if now_params.get(k) != prev_params.get(k))\n",
             "    changed = []\n",
             ("tests/flows/test_dry_run.py",),
             "the dry run's explanation no longer names the config fields that changed"),
    Mutation("progress-silent", "infra/progress.py",
             "                if done and self._due(run.info.run_id, pct, now):\n",
             "                if False and done and self._due(run.info.run_id, pct, now):\n",
             ("tests/infra/test_progress.py",),
             "the progress watcher no longer prints the training steps' step/total and loss"),
    Mutation("rank-traceback-dropped", "infra/ray_cluster.py",
             '                    raise RankFailed(f"{name} failed on rank {rank}: {exc}") from exc\n',
             '                    raise RankFailed(f"{name} failed on rank {rank}") from None\n',
             ("tests/test_cli_progress.py",),
             "a failing rank's own traceback no longer reaches the terminal"),
    Mutation("eager-step-imports", "flows/compress.py",
             "from srcompress.infra.store import atomic_write_bytes\n",
             "from srcompress.infra.store import atomic_write_bytes\nfrom srcompress.tasks.teacher.step import run_teacher  # noqa\n",
             ("tests/test_startup.py",),
             "the flow imports every step's module up front again (torch and diffusers on a cached rerun)"),
    Mutation("ddim-jump-ignores-x0", "models/teachers/multistep.py",
             "    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps\n",
             "    return alpha_prev.sqrt() * z_t + (1 - alpha_prev).sqrt() * eps\n",
             ("tests/models/test_multistep.py::test_ddim_jump_equals_diffusers_ddim_step",
              "tests/models/test_adaptive.py::test_smallest_interval_everywhere_is_the_fixed_step_ddim_teacher"),
             "AdaDiffSR's step jumps no longer follow DDIM (the adaptive sampler drifts from the fixed teacher)"),
    Mutation("dtss-never-saturates", "models/adaptive/dtss.py",
             "        if g_nr < -cfg.tau:\n",
             "        if False:\n",
             ("tests/models/test_adaptive.py",),
             "DTSS no longer lets saturated regions exit early"),
    Mutation("saturated-keeps-last", "models/adaptive/sampler.py",
             "                final[r], active[r] = x0_prev[r], False\n",
             "                final[r], active[r] = x0[k], False\n",
             ("tests/models/test_adaptive.py::test_saturated_regions_exit_early_with_the_previous_estimate",),
             "a saturated region keeps the estimate of the step that lowered NR, not the one before"),
    Mutation("nr-gain-in-first-half", "models/adaptive/train.py",
             "            g_nr = torch.where(torch.tensor([late(int(v), cfg) for v in t]), gain(nr, prev_nr), torch.zeros_like(fr))\n",
             "            g_nr = gain(nr, prev_nr)\n",
             ("tests/models/test_adaptive.py::test_gain_dataset_records_the_finest_trajectory_with_true_gains",),
             "the regressor's NR targets count NR metrics in the first half of the trajectory (the seed does not)"),
    Mutation("redundancy-sigma-path-for-multistep", "models/pruning/redundancy.py",
             '    if getattr(teacher, "kind", None) == "multistep":\n',
             '    if False:\n',
             ("tests/models/test_multistep.py::test_redundancy_of_a_multistep_teacher_is_across_its_timesteps",),
             "a multi-step teacher's PGP scores are taken along the one-step σ path instead of its timesteps"),
    Mutation("multistep-noise-per-batch", "models/teachers/multistep.py",
             "        g = [torch.Generator().manual_seed(self.seed * 1000003 + 2) for _ in range(z_lq.shape[0])]\n",
             "        g = torch.Generator().manual_seed(self.seed * 1000003 + 2)\n",
             ("tests/models/test_multistep.py::test_deterministic_batch_and_tile_invariant",),
             "DDPM's per-step noise depends on the batch an image is in"),
    Mutation("residual-drops-lq", "models/teachers/multistep.py",
             "        return z_lq + f\n",
             "        return f\n",
             ("tests/models/test_multistep.py::test_lq_residual_starts_at_the_lq_latent_and_survives_the_one_step_form",),
             "the lq_residual teacher no longer adds the LQ latent back"),
    Mutation("boundary-loss-everywhere", "models/metrics.py",
             "    cols = [j for j in range(1, w) if (j + offset[1]) % period == 0]\n",
             "    cols = [j for j in range(1, w)]\n",
             ("tests/models/test_bootstrap_metrics.py::test_boundary_loss_weighs_only_the_token_seams",),
             "the seam term weighs every column step, not only the token boundaries"),
    Mutation("serving-bundle-misses-code", "infra/serving.py",
             "    for name, _sha in c.modules:\n",
             "    for name, _sha in c.modules[:3]:\n",
             ("tests/tasks/test_register.py::test_version_carries_signature_example_code_and_pinned_requirements",),
             "the registered model carries only part of the inference code (serving outside srcompress fails)"),
    Mutation("model-input-links-dropped", "infra/tracking.py",
             "            elif model_id:\n                self.client.log_inputs(run_id, models=[LoggedModelInput(model_id)])\n",
             "            elif model_id and False:\n                self.client.log_inputs(run_id, models=[LoggedModelInput(model_id)])\n",
             ("tests/tasks/test_register.py::test_teacher_searched_and_both_students_are_logged_models_linked_by_runs",),
             "the runs that consume a model do not record it as an input (MLflow's lineage view loses the chain)"),
    Mutation("codever-memo-by-path", "infra/codever.py",
             "    hit = parses.get(sha)\n",
             "    hit = parses.get(path)\n",
             ("tests/infra/test_codever.py::test_the_on_disk_memo_is_read_and_an_edit_still_changes_the_version",),
             "the on-disk memo is keyed by file path, not by content: it is never what a later process reads"),
    Mutation("unet-residual-scale-dropped", "models/teachers/unet.py",
             "                return z_lq + (self.residual_std if self.residual_std > 0 else 1.0) * out\n",
             "                return z_lq + out\n",
             ("tests/models/test_bootstrap_unet.py",),
             "the one-step UNet teacher's residual ignores σ_d (a saved teacher restores at the wrong scale)"),
    Mutation("rank-log-tail-dropped", "infra/ray_cluster.py",
             "            if tail.lines:\n",
             "            if False:\n",
             ("tests/infra/test_ray_cluster.py::test_a_failing_rank_reports_its_traceback_and_last_log_lines",),
             "a failing rank's last log lines never reach the driver"),
    Mutation("pgp-coarse-ignores-scores", "models/pruning/progressive.py",
             "keep_blocks.add(max(candidates, key=lambda b: (candidates[b], b)))",
             "keep_blocks.add(min(candidates, key=lambda b: (candidates[b], b)))",
             ("tests/models/test_progressive.py",),
             "the coarse stage keeps each stage's least important block"),
    Mutation("pgp-fine-takes-encoder", "models/pruning/progressive.py",
             'if mask[i] > 0.5 and stages[n].part == "decoder"]',
             "if mask[i] > 0.5]",
             ("tests/models/test_progressive.py",),
             "the fine rounds prune encoder and bottleneck blocks too"),
    Mutation("pgp-not-rescored", "tasks/search/progressive.py",
             "            importance = masked_importance(",
             "            importance = torch.tensor([self.plan['coarse']['importance'][n] for n in self.names]); _ = (",
             ("tests/tasks/test_distill.py::test_a_unet_teacher_becomes_a_smaller_diffusers_unet_student_by_pgp_diffsrs_route",),
             "the fine rounds prune by the teacher's scores instead of re-scoring the recovered model"),
    Mutation("pgp-round-mask-dropped", "tasks/search/progressive.py",
             "        model.fixed_mask.copy_(mask.to(model.fixed_mask))",
             "        pass",
             ("tests/tasks/test_distill.py::test_a_unet_teacher_becomes_a_smaller_diffusers_unet_student_by_pgp_diffsrs_route",),
             "the ranks never adopt a fine round's mask"),
    Mutation("peam-not-attached", "models/student/student.py",
             "        if isinstance(self.phase, DecoderPEAM):  # the LQ latent's phase enters the pruned decoder stages",
             "        if False:",
             ("tests/models/test_peam.py",),
             "PEAM is built and saved but never runs inside the student's decoder"),
    Mutation("ablation-sign-flipped", "tasks/evaluate/retention.py",
             "            pm = _paired(result, against, variant, metric)",
             "            pm = _paired(result, variant, against, metric)",
             ("tests/tasks/test_retention.py",),
             "the ablation section reports the variant's advantage as the student's"),
    Mutation("dit-peam-not-attached", "models/student/student.py",
             "        if isinstance(self.phase, TokenPEAM):  # the LQ latent's phase enters after the pruned runs of blocks",
             "        if False:",
             ("tests/models/test_peam.py",),
             "a DiT student's PEAM never runs inside its transformer"),
]


def _copy_repo(dest: Path) -> None:
    """A copy whose ``srcompress/`` folder is a complete package: the layers linked into it as setup.py maps
    them. Found first on sys.path (the working directory, PYTHONPATH, pytest's rootdir — whichever a process
    uses), it never falls through to the editable install's finder, which would map the layers back to this
    checkout, unmutated."""
    ignore = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.egg-info", ".pytest_cache")
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    for layer in (*LAYERS, "configs"):
        (dest / "srcompress" / layer).symlink_to(dest / layer)


def apply(m: Mutation, root: Path) -> None:
    path = root / m.file
    text = path.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"{m.name}: the snippet to mutate occurs {text.count(m.old)}× in {m.file} (the code moved: "
                         "update tests/mutations.py)")
    path.write_text(text.replace(m.old, m.new))


def run(m: Mutation, scratch: Path, timeout: float) -> tuple[str, float, str]:
    """``caught`` | ``survived`` | ``error``, seconds, the last lines of pytest's output."""
    root = scratch / m.name
    _copy_repo(root)
    apply(m, root)
    env = dict(os.environ, PYTHONPATH=str(root))
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "-n", "0", "--durations=0",
           *m.tests]
    try:
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "error", time.monotonic() - t0, "timed out"
    tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
    if res.returncode == 1:
        return "caught", time.monotonic() - t0, tail
    if res.returncode == 0:
        return "survived", time.monotonic() - t0, tail
    return "error", time.monotonic() - t0, tail  # collection/usage errors are not a catch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="mutation names (default: all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.name:24} {m.file:36} {m.what}")
        return 0 if chosen or args.list else 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="srmut-") as tmp:
        for m in chosen:
            result, secs, tail = run(m, Path(tmp), args.timeout)
            rows.append((m, result, secs))
            print(f"[{result}] {m.name} ({secs:.0f}s)\n{tail if result != 'caught' else tail.splitlines()[-1]}\n",
                  flush=True)
    print("| mutation | what it breaks | owning tests | result | time |\n|---|---|---|---|---|")
    for m, result, secs in rows:
        print(f"| {m.name} | {m.what} | {', '.join(t.split('/')[-1] for t in m.tests)} | {result} | {secs:.0f} s |")
    caught = sum(r == "caught" for _, r, _ in rows)
    print(f"\nRESULT mutations={len(rows)} caught={caught} survived={len(rows) - caught}")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
