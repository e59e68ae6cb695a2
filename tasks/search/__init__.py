"""The search_pruning step: a learnable N:M depth mask (or a baseline mask) with LoRA, on DeepSpeed."""
