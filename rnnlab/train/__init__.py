"""Training entry points: ``rnnlab train lm`` (character-level LM), ``rnnlab train classify``,
and the recipes beyond one token sequence (``rnnlab train plstm``, ``lion``, ``lrcn``, ``sasrec``; each in its
``<recipe>_cli.py``)."""
