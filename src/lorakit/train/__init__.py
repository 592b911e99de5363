"""Training: the SFT / classification loop and its parts (losses, schedule, checkpoints, logs)."""
