"""The lab's single exception family."""

from __future__ import annotations


class LabError(Exception):
    """Anything that goes wrong in the lab: a component that will not start, a lab that is not running, ..."""


class LabInputError(LabError):
    """The caller asked for something invalid (unknown fault, bad engine name, bad mix, ...).

    The CLI maps it to exit code 3; everything else in the family exits 1.
    """
