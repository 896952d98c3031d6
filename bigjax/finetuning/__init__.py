"""Starting from another run: init_from (strict loading, freezing, learning-rate factors) and LoRA."""
