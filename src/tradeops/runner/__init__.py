"""The tradeops runner: incident playbooks through ansible-runner, as a Python API.

    import tradeops
    result = tradeops.run_incident("p0_outage", extravars={"p0_outage_reason": "INC-1234"})
    result.exit_code, result.halted, result.recovered, result.still_nogo, result.report_path

    thread, handle = tradeops.run_incident_async("p0_outage", event_handler=print)
    handle.cancel()

Modelled on ``ansible_runner.interface``; see :mod:`tradeops.runner.interface` for the run directory layout
and :mod:`tradeops.runner.secrets` for how secrets are kept out of it.
"""

from .catalog import Incident, get_incident, list_incidents
from .exceptions import (
    IncidentInputError,
    RunnerConfigurationError,
    RunnerError,
    RunnerExecutionError,
    RunNotFoundError,
    UnknownIncidentError,
)
from .interface import (
    RunHandle,
    default_runs_dir,
    list_runs,
    load_result,
    rotate_runs,
    run_incident,
    run_incident_async,
)
from .result import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_HALTED_NOT_RECOVERED,
    EXIT_RESOLVED,
    HostSummary,
    IncidentResult,
    TimelineEntry,
)
from .secrets import Secret

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_HALTED_NOT_RECOVERED",
    "EXIT_RESOLVED",
    "HostSummary",
    "Incident",
    "IncidentInputError",
    "IncidentResult",
    "RunHandle",
    "RunNotFoundError",
    "RunnerConfigurationError",
    "RunnerError",
    "RunnerExecutionError",
    "Secret",
    "TimelineEntry",
    "UnknownIncidentError",
    "default_runs_dir",
    "get_incident",
    "list_incidents",
    "list_runs",
    "load_result",
    "rotate_runs",
    "run_incident",
    "run_incident_async",
]
