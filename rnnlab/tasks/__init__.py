"""Seeded task generators with their metrics, one file per task family.

``rnnlab.tasks.get(name, **params)`` builds a task, ``available()`` lists them, and
``generator(seed, split)`` gives the data stream of a seed (train and test streams never coincide).
"""
from . import metrics  # noqa: F401
from .base import Task, available, generator, get, register, task_class  # noqa: F401

# Importing a task module registers its tasks.
from . import parity  # noqa: F401,E402
from . import state_tracking, languages, algorithmic  # noqa: F401,E402
from . import recall, copying, selectivbench, dlr  # noqa: F401,E402
from . import pointer  # noqa: F401,E402
