"""Launcher: export environment secrets from a 0600 file, delete it, exec the real command.

    python -m tradeops.runner._launch ENV_FILE -- ansible-playbook ...

ansible-runner records the environment it starts a process with (``artifacts/<id>/command``), so secrets the
playbook needs from the environment are not given to it there: this launcher reads them from the file, removes
the file at once, and replaces itself with the command. Only the file's path is ever recorded.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m tradeops.runner._launch ENV_FILE -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    env_file, command = args[0], args[2:]
    try:
        with open(env_file, encoding="utf-8") as fh:
            extra = json.load(fh)
    finally:
        try:
            os.unlink(env_file)
        except OSError:
            pass
    os.environ.update({str(k): str(v) for k, v in extra.items()})
    os.execvp(command[0], command)
    return 127  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main())
