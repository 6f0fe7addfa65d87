"""Training: the train state and step, the loop, optimiser, losses, checkpoints."""
