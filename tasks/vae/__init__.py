"""The ``compress_vae`` DAG step: TinySR's VAE compression derived from the teacher's VAE."""
