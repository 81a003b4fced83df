"""Task adapters. Each module in this package defines one task class decorated with `@register`.

Adding a task = adding one module here (plus its test); it is discovered by name.
"""

from __future__ import annotations

import importlib
import pkgutil

from spark_infer.tasks.base import Task, TaskOptions, register, registered

__all__ = ["Task", "TaskOptions", "register", "get_task", "task_names"]

_discovered = False


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in ("base", "hf") and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    _discovered = True


def get_task(name: str) -> type[Task]:
    """The task class registered under `name`; ValueError naming the known tasks otherwise."""
    _discover()
    try:
        return registered()[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}") from None


def task_names() -> list[str]:
    _discover()
    return sorted(registered())
