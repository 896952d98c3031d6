"""Using a trained checkpoint: --mode=eval and --mode=predict, and text sampling."""
