"""tradeops: the Python side of the tradeops.remediation collection (runner, reports, lab).

The runner API is exposed here too: ``tradeops.run_incident``, ``tradeops.run_incident_async``,
``tradeops.IncidentResult``, ``tradeops.Secret``, ... (see :mod:`tradeops.runner`).
"""

from typing import Any

__version__ = "0.1.0"

_RUNNER_EXPORTS = (
    "run_incident",
    "run_incident_async",
    "list_incidents",
    "get_incident",
    "load_result",
    "IncidentResult",
    "RunHandle",
    "Secret",
    "RunnerError",
    "IncidentInputError",
)


def __getattr__(name: str) -> Any:
    # Lazy, so `tradeops lab ...` does not import the runner.
    if name in _RUNNER_EXPORTS:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'tradeops' has no attribute {name!r}")
