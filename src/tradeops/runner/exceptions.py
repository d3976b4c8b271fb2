"""The one exception family of the tradeops runner.

Everything the runner raises on purpose derives from :class:`RunnerError`. Bad input (an unknown incident, a
malformed extra var, an inventory that does not exist) is an :class:`IncidentInputError`; the CLI maps it to
exit code 3. A playbook that runs and fails is *not* an exception: it is an
:class:`~tradeops.runner.result.IncidentResult` whose outcome says what failed.
"""

from __future__ import annotations


class RunnerError(Exception):
    """Base class of every error the tradeops runner raises."""


class IncidentInputError(RunnerError, ValueError):
    """The caller asked for something that cannot run: bad incident name, extra var, inventory, option."""


class UnknownIncidentError(IncidentInputError, LookupError):
    """No incident playbook of that name (``tradeops incidents`` lists them)."""


class RunNotFoundError(IncidentInputError, LookupError):
    """No past run of that id under the runs directory."""


class RunnerConfigurationError(RunnerError):
    """The runner itself could not be set up: runs directory not writable, ansible-runner refused its config."""


class RunnerExecutionError(RunnerError):
    """ansible-runner (or the transmit / worker / process pipeline) broke down before producing a result."""
