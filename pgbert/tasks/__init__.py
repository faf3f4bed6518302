"""Tasks and data, kept apart from the pruning method."""

from .data import BUNDLED, DataOptions, load_task
from .specs import TASKS, TaskData, TaskSpec, get_task

__all__ = ["BUNDLED", "DataOptions", "TaskData", "TaskSpec", "TASKS", "get_task", "load_task"]
