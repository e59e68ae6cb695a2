"""TinySR's VAE compression on the real SD3 VAE, row by row as its Table 3 ablation: cost and speed.

    .venv/bin/python bench/vae_compress.py [--size 512] [--time-size 256] [--reps 3] [--width 64]

Builds SD3-medium's ``AutoencoderKL`` from its config (random weights: cost and speed do not depend on
training) and the three compression steps of ``models/student/vae_prune.py`` cumulatively — channel pruning
to ``--width``, attention removed, SepConv in the encoder — plus the TAESD-style tiny VAE of TinySR's released
code (``models/student/tiny_vae.py``). For each: parameters and MACs of one encode + decode at ``--size`` px
(meta device, attention matmuls counted), and the CPU latency of one encode + decode at ``--time-size`` px
(interleaved, one untimed warm-up each, median of ``--reps``). TinySR (Table 3, GPU): teacher VAE 1,781.91
GMACs / 95.36 ms → 78.48 GMACs / 9.25 ms. Reconstruction quality needs trained weights: the compress_vae step
measures it. Ends with ``RESULT gmacs_teacher=… gmacs_compressed=… macs_ratio=… speedup=…``.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--time-size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_args()
    import logging

    import torch
    from diffusers import AutoencoderKL

    from srcompress.models.student.plan import SD3_MEDIUM_VAE, _clean, macs
    from srcompress.models.student.tiny_vae import tiny_vae_config, SeparableAutoencoderTiny
    from srcompress.models.student.vae_prune import pruned_architecture

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    torch.manual_seed(0)

    def variants(device: str) -> dict:
        with torch.device(device):
            teacher = AutoencoderKL.from_config(_clean(SD3_MEDIUM_VAE)).eval()
            return {"teacher": teacher,
                    "+ channel pruning": pruned_architecture(teacher, args.width, False, False).eval(),
                    "+ attention removed": pruned_architecture(teacher, args.width, True, False).eval(),
                    "+ SepConv encoder (ours)": pruned_architecture(teacher, args.width, True, True).eval(),
                    "TAESD tiny VAE (TinySR code)": SeparableAutoencoderTiny(**tiny_vae_config(16, 8, args.width)).eval()}

    def roundtrip(vae, x):
        if isinstance(vae, SeparableAutoencoderTiny):
            return vae.decode(vae.encode(x).latents).sample
        return vae.decode(vae.encode(x).latent_dist.mean).sample

    rows = {}
    for name, vae in variants("meta").items():
        x = torch.zeros(1, 3, args.size, args.size, device="meta")
        with torch.no_grad():
            rows[name] = {"params": sum(p.numel() for p in vae.parameters()), "gmacs": macs(lambda: roundtrip(vae, x)) / 1e9}
    real = variants("cpu")
    x = torch.rand(1, 3, args.time_size, args.time_size) * 2 - 1
    times: dict[str, list[float]] = {k: [] for k in real}
    with torch.no_grad():
        for vae in real.values():
            roundtrip(vae, x)  # warm-up
        for _ in range(args.reps):
            for name, vae in real.items():
                t0 = time.perf_counter()
                roundtrip(vae, x)
                times[name].append((time.perf_counter() - t0) * 1000)
    t_ms = statistics.median(times["teacher"])
    print(f"SD3 VAE encode + decode: MACs at {args.size} px (meta), CPU latency at {args.time_size} px "
          f"({torch.get_num_threads()} threads, median of {args.reps})")
    print(f"{'':32s}{'params':>10s}{'GMACs':>10s}{'ms':>10s}{'MACs x':>9s}{'speed x':>9s}")
    for name, r in rows.items():
        ms = statistics.median(times[name])
        print(f"{name:32s}{r['params'] / 1e6:9.2f}M{r['gmacs']:10.1f}{ms:10.1f}"
              f"{rows['teacher']['gmacs'] / r['gmacs']:9.1f}{t_ms / ms:9.1f}")
    print("TinySR Table 3 (GPU): 1,781.91 GMACs / 95.36 ms -> 78.48 GMACs / 9.25 ms (22.7x MACs, 10.3x speed)")
    ours = "+ SepConv encoder (ours)"
    print(f"RESULT gmacs_teacher={rows['teacher']['gmacs']:.2f} gmacs_compressed={rows[ours]['gmacs']:.2f} "
          f"macs_ratio={rows['teacher']['gmacs'] / rows[ours]['gmacs']:.2f} "
          f"speedup={t_ms / statistics.median(times[ours]):.2f} params_compressed={rows[ours]['params']} "
          f"size={args.size} time_size={args.time_size}")


if __name__ == "__main__":
    main()
