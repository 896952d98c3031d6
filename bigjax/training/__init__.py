"""The training run: compiled programs, the loop and its hooks, checkpoints, stopping, preemption, start-up checks."""
