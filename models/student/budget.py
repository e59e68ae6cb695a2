"""Budget-driven compression: the N:M depth pattern (and the tiny VAE's width) whose student meets a cost
budget — GMACs or parameters of one untiled pass at a size — as closely as possible from below.

    costs = student_costs(teacher, build, size=512, widths=[16, 32, 48, 64], count=count)   # on the meta device
    choice = choose(costs, "gmacs", 420.0)        # {"n": 2, "m": 4, "vae_width": 64, "gmacs": 403.6, …}
    choice = budget_choice(teacher, shape, "params", 341e6, size=512, widths=[16, 32, 48, 64])   # both, for a shape

Why a cost model and not a count per candidate: a 24-block teacher has ~100 N:M patterns (every M dividing
the blocks, every N ≤ M) times the VAE widths; counting each student on the meta device takes ~1 s at SD3
size. The student's backbone cost is affine in the number of kept blocks k (every kept block of one teacher
has the same shape once the text stream is gone; what is not a block — patch embedding, final norm and
projection — is paid once), so two exact counts (k = 1 and k = 2) give it for every k, and the VAE is
counted once per width. The chosen student is then counted exactly (``plan``), and ``choose`` reports the
model's figure beside the budget.

Choice rule (ours; TinySR fixes 2:4 by hand): among the candidates whose cost is within ``tolerance`` below
the budget (``(1 - tolerance)·budget ≤ cost ≤ budget``), the one with TinySR's group size M = 4 if any, else
the smallest M (groups of consecutive blocks: the more local the search, the closer to TinySR's), then the
largest cost (the least compression that meets the budget), then the widest VAE. Nothing within the window:
a ``ValueError`` that names the closest candidates on both sides.
"""

from __future__ import annotations

from typing import Callable

Metric = str  # "gmacs" | "params"
METRICS = ("gmacs", "params")


def nm_patterns(blocks: int) -> list[tuple[int, int]]:
    """Every N:M with M dividing ``blocks`` and 1 ≤ N ≤ M (N = M keeps every block)."""
    return [(n, m) for m in range(1, blocks + 1) if blocks % m == 0 for n in range(1, m + 1)]


def student_costs(teacher, build: Callable[[list[int], int | None], object], size: int,
                  widths: list[int] | None, count: Callable[[object, int], dict]) -> dict:
    """The cost model of ``build(mask, vae_width)`` students of ``teacher`` at ``size``: backbone params and
    GMACs at k = 1 and k = 2 kept blocks (exact, ``count``), their affine extension to every k, and the VAE's
    per width (``None``: the student keeps the VAE ``build`` gives it)."""
    blocks = len(teacher.backbone.transformer_blocks) if hasattr(teacher.backbone, "transformer_blocks") else None
    if not blocks:
        raise ValueError("budget: only transformer (SD3-family) teachers have a per-block cost model")
    if blocks < 2:
        raise ValueError("budget: the teacher has fewer than 2 blocks; nothing to choose")
    one = count(build([1] + [0] * (blocks - 1), None), size)
    two = count(build([1, 1] + [0] * (blocks - 2), None), size)
    per_block = {k: two["backbone"][k] - one["backbone"][k] for k in ("params", "gmacs")}
    base = {k: one["backbone"][k] - per_block[k] for k in ("params", "gmacs")}
    vae = {None: {"params": one["vae"]["params"], "gmacs": one["vae"]["gmacs"]}}
    for w in widths or []:
        c = count(build([1] + [0] * (blocks - 1), w), size)
        vae[w] = {"params": c["vae"]["params"], "gmacs": c["vae"]["gmacs"]}
    return {"blocks": blocks, "size": size, "base": base, "per_block": per_block, "vae": vae}


def candidates(costs: dict) -> list[dict]:
    out = []
    for n, m in nm_patterns(costs["blocks"]):
        k = costs["blocks"] // m * n
        for w, v in costs["vae"].items():
            if costs["vae"].keys() - {None} and w is None:
                continue  # widths were given: the VAE is one of them
            bb = {q: costs["base"][q] + k * costs["per_block"][q] for q in ("params", "gmacs")}
            out.append({"n": n, "m": m, "kept": k, "vae_width": w, "params": int(round(bb["params"] + v["params"])),
                        "gmacs": bb["gmacs"] + v["gmacs"]})
    return out


def choose(costs: dict, metric: Metric, budget: float, tolerance: float = 0.05) -> dict:
    """The candidate ``costs`` offers for ``budget`` (module docstring: the rule); ``budget`` in GMACs or in
    parameters (not millions). Returns the candidate with ``budget``, ``metric`` and ``of_budget`` (cost /
    budget) added."""
    if metric not in METRICS:
        raise ValueError(f"budget: metric must be one of {METRICS}, got {metric!r}")
    if budget <= 0 or not 0 < tolerance < 1:
        raise ValueError("budget: the budget must be positive and the tolerance in (0, 1)")
    cands = candidates(costs)
    window = [c for c in cands if (1 - tolerance) * budget <= c[metric] <= budget]
    if not window:
        below = max((c for c in cands if c[metric] <= budget), key=lambda c: c[metric], default=None)
        above = min((c for c in cands if c[metric] > budget), key=lambda c: c[metric], default=None)
        near = "; ".join(f"{c['n']}:{c['m']} VAE {c['vae_width']} → {fmt_cost(metric, c[metric])}"
                         for c in (below, above) if c is not None)
        raise ValueError(f"budget: no N:M (and VAE width) within {tolerance:.0%} below {fmt_cost(metric, budget)} "
                         f"at {costs['size']} px; the nearest: {near}")
    best = min(window, key=lambda c: (c["m"] != 4, c["m"], -c[metric], -(c["vae_width"] or 0)))
    return {**best, "metric": metric, "budget": budget, "of_budget": best[metric] / budget,
            "tolerance": tolerance, "size": costs["size"]}


def fmt_cost(metric: Metric, value: float) -> str:
    """``value`` in the metric's unit as printed: GMACs, or millions of parameters."""
    return f"{value:,.1f} GMACs" if metric == "gmacs" else f"{value / 1e6:,.1f}M params"


def budget_choice(teacher, shape, metric: Metric, budget: float, size: int = 512, tolerance: float = 0.05,
                  widths: list[int] | None = None) -> dict:
    """``choose`` for the students ``shape`` (``models/student/shape.py``) makes of ``teacher`` (a meta-device
    SD3 teacher: ``plan.build_teacher`` / ``plan.teacher_from_folder``), at ``size`` px; ``widths``: tiny-VAE
    widths to choose from (the shape must have a tiny VAE), ``None``: the shape's own VAE."""
    from srcompress.models.student import plan as planning
    from srcompress.models.student.shape import final_student

    if widths and shape.tiny_vae is None:
        raise ValueError("budget: VAE widths to choose from, but the student keeps the teacher's VAE")
    planning.check_size(teacher, size)

    def build(mask, width):
        s = shape.with_vae_width(width)
        return planning.build_planned_student(teacher, mask, build=lambda t, mk: final_student(t, mk, s))

    def count(student, px):
        c = planning.count_model(student, px)
        return {"backbone": c["backbone"], "vae": c["vae"]}

    return choose(student_costs(teacher, build, size, widths, count), metric, budget, tolerance)
