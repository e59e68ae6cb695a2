"""Depth pruning: learnable N:M masks, masked blocks, redundancy scores (pure PyTorch; docs/methods.md §6-§7)."""
