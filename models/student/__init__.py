"""The student: block surgery on the teacher, TinySR streamlining, a tiny VAE, the phase-exchange adapter,
and the diffusers-loadable folder it is published as (docs/methods.md §8)."""
