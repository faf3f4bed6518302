"""Tasks and data, kept apart from the pruning method."""

from .data import BUNDLED, DataOptions, TaskData, load_task
from .specs import TASKS, TaskSpec, get_task

__all__ = ["BUNDLED", "DataOptions", "TaskData", "TaskSpec", "TASKS", "get_task", "load_task"]
