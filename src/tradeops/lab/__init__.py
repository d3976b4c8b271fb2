"""The tradeops lab: a simulated trading stack on one machine.

Real PostgreSQL, real Redis and N simulated trading engines served by one asyncio process, all on
127.0.0.1 and described by ``<lab_dir>/state.json``. The lab knows nothing of Ansible.

    from tradeops.lab import Lab
    lab = Lab("/tmp/mylab")
    lab.up(engines=20)
    lab.inject("hang", ["engine-003"])
    lab.restart(["engine-003"])   # like a process restart: fixes crash and hang, halt flags stay
    lab.inject("corrupt-rows")    # database faults are lab-wide: no engine names
    lab.down()
"""

from .errors import LabError, LabInputError
from .manager import Lab
from .state import DB_FAULTS, FAULTS, HALT_METHODS, default_lab_dir

__all__ = ["DB_FAULTS", "FAULTS", "HALT_METHODS", "Lab", "LabError", "LabInputError", "default_lab_dir"]
