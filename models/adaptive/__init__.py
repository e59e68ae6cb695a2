"""AdaDiffSR (ECCV 2024): region-adaptive step skipping for multi-step diffusion SR teachers (pure PyTorch)."""
