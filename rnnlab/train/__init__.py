"""Training entry points: ``rnnlab train lm`` (character-level LM), ``rnnlab train classify``."""
