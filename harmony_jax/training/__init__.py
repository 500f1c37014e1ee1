"""Train state, optimizer, the jitted train step and checkpointing."""
