"""Per-process model cache: a model is loaded once per Python worker and device.

Spark reuses Python workers across tasks (`spark.python.worker.reuse`, on by default), so a module
level cache outlives a task. Like `pyspark.ml.model_cache` it is keyed by a stable id, but the key
here is (model fingerprint, task options, device), so a worker serving GPU 0 and later GPU 1 holds
one model per device, and a changed model or option never reuses a stale one.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

DEFAULT_CAPACITY = 2


class ModelCache:
    """A bounded, thread-safe LRU of loaded models with per-key load locks."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        #: loads per key over the life of this process (how tests and metrics count reuse)
        self.loads: Counter[Hashable] = Counter()

    def get(self, key: Hashable, loader: Callable[[], Any]) -> tuple[Any, bool]:
        """Return (model, loaded_now). Concurrent callers of one key wait for a single load."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key], False
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key], False
            model = loader()
            with self._lock:
                self._items[key] = model
                self.loads[key] += 1
                while len(self._items) > self.capacity:
                    old_key, old = self._items.popitem(last=False)
                    self._key_locks.pop(old_key, None)
                    _release(old)
            return model, True

    def evict(self, key: Hashable) -> bool:
        """Drop (and close) one model; True when it was cached."""
        with self._lock:
            model = self._items.pop(key, None)
            self._key_locks.pop(key, None)
        if model is not None:
            _release(model)
        return model is not None

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def clear(self) -> None:
        with self._lock:
            for m in self._items.values():
                _release(m)
            self._items.clear()
            self._key_locks.clear()


def _release(model: Any) -> None:
    close = getattr(model, "close", None)
    if callable(close):
        close()


#: the process-wide cache used by the UDFs
MODEL_CACHE = ModelCache()
