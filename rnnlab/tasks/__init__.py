"""Seeded task generators with their metrics, one file per task family.

``rnnlab.tasks.get(name, **params)`` builds a task, ``available()`` lists them, and
``generator(seed, split)`` gives the data stream of a seed (train and test streams never coincide).
"""
# Importing a task module registers its tasks.
from . import (  # noqa: F401
    algorithmic,
    copying,
    dlr,
    languages,
    metrics,
    parity,
    pointer,
    reber,
    recall,
    selectivbench,
    state_tracking,
)
from .base import Task, available, generator, get, register, task_class  # noqa: F401
