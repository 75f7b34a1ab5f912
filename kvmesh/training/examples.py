"""Training examples: a `Task`, or anything with a `.task` (a benchmark `Sample`), and its stable id."""

from __future__ import annotations

from kvmesh.agents.task import Task


def example_task(example) -> Task:
    task = example if isinstance(example, Task) else getattr(example, "task", None)
    if not isinstance(task, Task):
        raise TypeError(f"a training example is a Task or has a .task Task, got {type(example).__name__}")
    return task


def example_id(example, index: int) -> str:
    task = example_task(example)
    return str(getattr(example, "id", None) or task.id or index)
