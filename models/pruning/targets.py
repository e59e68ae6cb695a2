"""TinySR's LoRA targets for SD3 transformer blocks (peft module names; docs/methods.md §10), in a module of
their own so that the search config validates without importing torch."""

TINYSR_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "proj", "linear", "linear_1", "linear_2", "net.2"]
