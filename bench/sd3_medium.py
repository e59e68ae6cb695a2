"""The real architecture, timed: TSD-SR's SD3-medium teacher and the tsdsr-sd3 preset's student, end to end.

    .venv/bin/python bench/sd3_medium.py [--sizes 512 256] [--reps 3] [--device auto] [--dtype float32]

Both models are built from their configs with random weights (speed does not depend on training): the teacher
is SD3-medium's MMDiT (24 blocks, 2.03B params) + SD3's AutoencoderKL with TSD-SR's 333 prompt tokens; the
student is what `configs/tsdsr-sd3.yaml`'s distillation builds from it (`tasks/distill/build.py:
final_student`): 12 of 24 blocks (2:4), image-only with cached modulation, the tiny separable VAE. One image
per call, end to end (VAE encode → one transformer step → decode), one untiled pass, no colour fix. Calls
are interleaved teacher/student, after one untimed warm-up each; the median of ``--reps`` is reported.
TinySR reports 5.68x over TSD-SR on a GPU (its Table 1). Ends with one line
``RESULT speedup_512=… speedup_256=… …``.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args()
    import logging

    import torch

    from srcompress.config import load_config
    from srcompress.models.device import resolve_device
    from srcompress.models.student import plan as planning
    from srcompress.tasks.distill.build import final_student

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    cfg = load_config("tsdsr-sd3")
    mask = planning.keep_to_mask(planning.nm_keep(24, cfg.search.n, cfg.search.m), 24)
    t0 = time.perf_counter()
    teacher = planning.build_teacher(device="cpu")  # random init on the CPU, then moved
    with torch.no_grad():
        student = final_student(teacher, mask, cfg.distill)
    teacher, student = (m.to(device=device, dtype=dtype).eval().requires_grad_(False) for m in (teacher, student))
    teacher.tile = student.tile = None  # one untiled pass each
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(f"built in {time.perf_counter() - t0:.0f} s on {device} ({args.dtype}, {torch.get_num_threads()} threads): "
          f"teacher {n(teacher) / 1e6:,.1f}M params, student {n(student) / 1e6:,.1f}M "
          f"({'image-only' if student.image_only else 'text stream kept'}, "
          f"{'tiny VAE' if student.tiny_vae else 'teacher VAE'}, {len(student.backbone.transformer_blocks)} blocks)")

    def timed(model, x) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    result = {}
    for size in args.sizes:
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)).to(device=device, dtype=dtype)
        for model in (teacher, student):
            timed(model, x)  # warm-up (allocator, kernels)
        times = {"teacher": [], "student": []}
        for _ in range(args.reps):
            times["teacher"].append(timed(teacher, x))
            times["student"].append(timed(student, x))
        med = {k: statistics.median(v) for k, v in times.items()}
        speedup = med["teacher"] / med["student"]
        result[f"speedup_{size}"] = round(speedup, 3)
        result[f"teacher_s_{size}"] = round(med["teacher"], 4)
        result[f"student_s_{size}"] = round(med["student"], 4)
        print(f"{size}x{size}: teacher {med['teacher']:.3f} s, student {med['student']:.3f} s (medians of "
              f"{args.reps}; all: {[round(t, 3) for t in times['teacher']]} / {[round(t, 3) for t in times['student']]})"
              f" -> {speedup:.2f}x")
    result.update(device=device.type, dtype=args.dtype, teacher_mparams=round(n(teacher) / 1e6, 1),
                  student_mparams=round(n(student) / 1e6, 1), tinysr_reported_speedup=5.68)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
