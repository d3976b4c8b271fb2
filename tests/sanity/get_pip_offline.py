"""Offline stand-in for pypa's get-pip.py, used by `ansible-test sanity`.

ansible-test bootstraps pip into each sanity virtualenv by downloading get-pip.py from a host
that this network cannot reach, and it runs pip with a filtered environment (no PIP_* or
SSL_* variables). This stand-in installs pip from the interpreter's own `ensurepip`, gives the
virtualenv a site pip.conf merged from the machine's pip configuration files (index, CA
bundle), then installs what ansible-test asked for. The sanity harness (test_sanity.py)
places it where ansible-test looks for its cached bootstrap script.
"""

import configparser
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=False, default_pip=True)
os.environ.pop("PIP_CONFIG_FILE", None)  # ensurepip sets it to os.devnull in this process

merged = configparser.ConfigParser()
for path in ("/etc/xdg/pip/pip.conf", "/etc/pip.conf", os.path.expanduser("~/.pip/pip.conf"),
             os.path.expanduser("~/.config/pip/pip.conf")):
    if os.path.exists(path):
        merged.read(path)
for var in ("PIP_CERT", "SSL_CERT_FILE"):
    if os.environ.get(var):
        merged.setdefault("global", {})
        merged["global"]["cert"] = os.environ[var]
        break
if merged.sections():
    with open(os.path.join(sys.prefix, "pip.conf"), "w") as fh:
        merged.write(fh)

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
