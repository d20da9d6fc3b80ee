"""Training task adapters: built-in data sets (`data/`), presets, and the (Q)LoRA trainer."""
