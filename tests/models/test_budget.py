"""models/student/budget.py: the cost model against exact meta-device counts of SD3-medium students, and the
choice rule (within the tolerance below the budget; TinySR's M = 4 first)."""

from __future__ import annotations

import pytest

from srcompress.models.student import plan as planning
from srcompress.models.student.budget import choose, nm_patterns, student_costs


@pytest.fixture(scope="module")
def sd3():
    teacher = planning.build_teacher()

    def build(mask, width):
        tiny = None if width is None else {**planning.TINY_VAE, "width": width}
        return planning.build_planned_student(teacher, mask, tiny or planning.TINY_VAE)

    def count(student, size):
        c = planning.count_model(student, size)
        return {"backbone": c["backbone"], "vae": c["vae"]}

    return teacher, build, count, student_costs(teacher, build, 512, [32, 64], count)


def test_nm_patterns_cover_every_divisor_group():
    assert nm_patterns(4) == [(1, 1), (1, 2), (2, 2), (1, 4), (2, 4), (3, 4), (4, 4)]


def test_the_affine_cost_model_equals_the_exact_count(sd3):
    teacher, build, count, costs = sd3
    k = 12  # TinySR's 2:4 of 24 blocks, not one of the two counted points
    exact = count(build(planning.keep_to_mask(planning.nm_keep(24, 2, 4), 24), 64), 512)
    for q in ("params", "gmacs"):
        model = costs["base"][q] + k * costs["per_block"][q] + costs["vae"][64][q]
        assert model == pytest.approx(exact["backbone"][q] + exact["vae"][q], rel=1e-9), q


def test_tinysr_budget_picks_2_of_4_and_a_tighter_one_prunes_more(sd3):
    *_, costs = sd3
    c = choose(costs, "gmacs", 420.0)  # 2:4 with the 64-wide VAE: 403.6 GMACs, within 5% below
    assert (c["n"], c["m"], c["vae_width"]) == (2, 4, 64) and 0.95 <= c["of_budget"] <= 1.0, c
    tinysr = choose(costs, "gmacs", 427.0)  # TinySR's 427 (Table 1): 2:4 is 5.5% below, so another pattern
    assert 0.95 * 427 <= tinysr["gmacs"] <= 427 and tinysr["m"] != 4, tinysr
    p = choose(costs, "params", 341e6)
    assert p["params"] <= 341e6 and p["m"] == 4 and p["of_budget"] >= 0.95, p
    tight = choose(costs, "gmacs", 250.0)
    assert tight["kept"] < c["kept"] and tight["gmacs"] <= 250.0 and tight["of_budget"] >= 0.95, tight
    with pytest.raises(ValueError, match="no N:M .* within 5% below 1.0 GMACs"):
        choose(costs, "gmacs", 1.0)  # below the smallest student: the error names the nearest candidates


def test_a_saved_teachers_budget_choice_is_the_student_it_counts(tmp_path):
    """``budget_choice`` on a teacher read back from its diffusers folder (shapes only, on the meta device): the
    chosen N:M and tiny-VAE width give a student whose parameters, counted on the real (CPU) model the shape
    builds, lie in the window below the budget; a budget between two students' costs picks the smaller."""
    from srcompress.models.student.budget import budget_choice
    from srcompress.models.student.shape import StudentShape, TinyVAEShape, final_student
    from srcompress.models.teachers import save_teacher
    from srcompress.models.teachers.tiny import tiny_sd3_teacher

    real = tiny_sd3_teacher(seed=0, num_layers=4, tile=32, patch_size=4)
    folder = save_teacher(real, tmp_path / "teacher")
    meta = planning.teacher_from_folder(folder)
    assert next(meta.backbone.parameters()).is_meta and len(meta.backbone.transformer_blocks) == 4
    assert meta.prompt_embeds.shape == real.prompt_embeds.shape
    shape = StudentShape(tiny_vae=TinyVAEShape(width=16, blocks=1))

    def exact(keep: list[int], width: int) -> int:  # the real student's parameters, no cost model
        student = final_student(real, planning.keep_to_mask(keep, 4), shape.with_vae_width(width))
        return sum(p.numel() for p in student.parameters())

    two_w8, one_w8, one_w16 = exact([0, 1], 8), exact([0], 8), exact([0], 16)
    assert one_w8 < one_w16 < two_w8  # a second block costs more than a wider VAE here
    got = budget_choice(meta, shape, "params", two_w8, size=32, widths=[8, 16])
    assert (got["n"], got["m"], got["vae_width"], got["params"]) == (2, 4, 8, two_w8), got
    got = budget_choice(meta, shape, "params", one_w16 + 1, size=32, widths=[8, 16], tolerance=0.5)
    assert (got["kept"], got["vae_width"], got["params"]) == (1, 16, one_w16), got  # largest cost in the window
    with pytest.raises(ValueError, match="exceeds one untiled pass"):
        budget_choice(meta, shape, "params", two_w8, size=512, widths=[8, 16])
    with pytest.raises(ValueError, match="no N:M"):
        budget_choice(meta, shape, "params", one_w8 * 0.5, size=32, widths=[8, 16])
    with pytest.raises(ValueError, match="keeps the teacher's VAE"):
        budget_choice(meta, StudentShape(), "params", two_w8, size=32, widths=[8, 16])
