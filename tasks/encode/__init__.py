"""The ``encode_latents`` step: LQ, HQ and teacher-output latents, pre-encoded once on Ray Data workers."""
