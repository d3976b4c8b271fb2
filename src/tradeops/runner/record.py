"""The incident record's model, loaded from the collection: one verdict for the playbook and the runner.

The collection computes and words the verdict in ``plugins/plugin_utils/incident.py`` (standard library
only). The runner loads that same file from the project it runs, so ``tradeops run``'s exit code and summary,
the report's verdict and the notifications are one computation.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from .catalog import find_project_dir

_MODEL_PATH = ("plugins", "plugin_utils", "incident.py")
_cache: dict[str, ModuleType] = {}


def model(project_dir: str | os.PathLike[str] | None = None) -> ModuleType:
    """The collection's ``incident`` module (cached per file)."""
    path = find_project_dir(project_dir).joinpath(*_MODEL_PATH)
    key = str(path)
    if key not in _cache:
        name = f"tradeops_incident_model_{len(_cache)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the incident record model from {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _cache[key] = module
    return _cache[key]


def load(path: str | os.PathLike[str], project_dir: str | os.PathLike[str] | None = None) -> dict:
    return model(project_dir).load(str(Path(path)))
