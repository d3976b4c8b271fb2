"""Secret hygiene for runs through ansible-runner.

Measured with ansible-runner 2.4.3: it writes the whole process environment, unmasked, into
``artifacts/<id>/command``; extra vars into ``env/extravars`` (or onto the recorded command line); every job
event, with its result, into ``job_events/``; and the raw output into ``stdout``. So the runner:

* never hands the caller's environment to Ansible: the child gets an allow-list (PATH, HOME, locale, ANSIBLE_*,
  TRADEOPS_*, ...), and the allow-listed names that look secret are dropped too. Environment secrets that a
  playbook needs (``secret_env``) reach ansible-playbook through a 0600 file that a small launcher reads,
  deletes and exports before it execs ansible-playbook;
* passes secret extra vars (a :class:`Secret` value, or a name that looks secret) through a 0600 ``-e @file``
  in a private 0700 directory outside the runs directory (on tmpfs when there is one), removed after the run;
  they are tagged ``!unsafe`` so Ansible never templates them;
* redacts every job event (known secret values anywhere, and values under secret-looking keys) before it is
  written or handed to an event handler, and writes ``stdout`` itself from the redacted events;
* sweeps the whole run directory afterwards and redacts (and reports) anything that still got through.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

MASK = "********"
# Shorter secret values are not redacted by value (they would mask ordinary words); they still never reach
# the environment, the command line or env/ files.
MIN_SECRET_LEN = 4

# Names whose values are secrets: password, passwd, passphrase, secret, token, api key, private key, credential.
_SECRET_WORDS = r"(pass(word|wd|phrase)?|secret|token|api_?key|private_?key|access_?key|credentials?|auth)"
SECRET_NAME_RE = re.compile(rf"(^|[_\W]){_SECRET_WORDS}($|[_\W])", re.IGNORECASE)
# ...unless they name where a secret lives rather than the secret itself.
NOT_SECRET_SUFFIX_RE = re.compile(r"_(FILE|PATH|DIR|SOCK|HEADER|URL|ID|TYPE|NAME)$", re.IGNORECASE)

# The environment ansible-playbook gets from the caller's. Everything else is left behind.
ENV_ALLOW = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "VIRTUAL_ENV",
    "PYTHONPATH", "SSH_AUTH_SOCK", "KUBECONFIG", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
    "XDG_RUNTIME_DIR", "NO_PROXY", "no_proxy",
})
ENV_ALLOW_PREFIXES = ("LC_", "ANSIBLE_", "TRADEOPS_")


def looks_secret(name: str) -> bool:
    """Whether a variable name says it holds a secret (``redis_password``, ``VAULT_TOKEN``, ``api_key``)."""
    return bool(SECRET_NAME_RE.search(name)) and not NOT_SECRET_SUFFIX_RE.search(name)


class Secret:
    """A value that must never be written to disk or shown: ``extravars={"vault_token": Secret(token)}``."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value.value if isinstance(value, Secret) else value

    @property
    def value(self) -> Any:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", repr(type(self._value))))


def _contains_secret(value: Any) -> bool:
    if isinstance(value, Secret):
        return True
    if isinstance(value, Mapping):
        return any(_contains_secret(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_secret(v) for v in value)
    return False


def unwrap(value: Any) -> Any:
    """``value`` with every :class:`Secret` replaced by what it holds."""
    if isinstance(value, Secret):
        return unwrap(value.value)
    if isinstance(value, Mapping):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [unwrap(v) for v in value]
    return value


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, Secret):
        value = value.value
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def split_extravars(extravars: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plain, secret) extra vars: a var is secret if it holds a :class:`Secret` or its name looks secret."""
    plain: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for key, value in (extravars or {}).items():
        if _contains_secret(value) or looks_secret(str(key)):
            secret[str(key)] = unwrap(value)
        else:
            plain[str(key)] = value
    return plain, secret


class Redactor:
    """Masks known secret values anywhere in text or structures, and values under secret-looking keys."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self.add(values)

    def add(self, values: Iterable[Any]) -> None:
        for value in values:
            for leaf in _leaves(value):
                if len(leaf) >= MIN_SECRET_LEN and leaf != MASK:
                    self._values.add(leaf)
                    # the same value as it appears inside JSON strings
                    escaped = json.dumps(leaf)[1:-1]
                    if escaped != leaf:
                        self._values.add(escaped)
        # longest first, so a secret that contains another is masked whole
        self._ordered = sorted(self._values, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def text(self, text: str) -> str:
        for value in self._ordered:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def found_in(self, text: str) -> bool:
        return any(value in text for value in self._ordered)

    def data(self, value: Any, key: str | None = None) -> Any:
        """A redacted copy of a JSON-like structure."""
        scalar = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        if key is not None and scalar and looks_secret(key):
            if str(value) not in ("", MASK, "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"):
                return MASK
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.data(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(v) for v in value]
        return value

    def event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Redact one ansible-runner job event in place (it is then written by ansible-runner) and return it."""
        clean = self.data(event)
        event.clear()
        event.update(clean)
        return event

    def sweep(self, root: Path) -> list[str]:
        """Redact every regular file under ``root`` that still holds a known secret; returns their paths."""
        if not self:
            return []
        needles = [v.encode("utf-8") for v in self._ordered]
        touched = []
        for path in sorted(root.rglob("*")):
            try:
                st = path.lstat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            try:
                blob = path.read_bytes()
            except OSError:
                continue
            if not any(n in blob for n in needles):
                continue
            for n in needles:
                blob = blob.replace(n, MASK.encode())
            path.write_bytes(blob)
            touched.append(str(path))
        return touched


def child_env(parent: Mapping[str, str], explicit: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The environment for ansible-playbook: the allow-listed part of ``parent`` plus ``explicit``.

    Returns (env, dropped_secret_values): values of secret-looking parent variables, for the redactor."""
    env: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in parent.items():
        allowed = key in ENV_ALLOW or key.startswith(ENV_ALLOW_PREFIXES)
        if looks_secret(key):
            dropped.append(value)
            continue
        if allowed:
            env[key] = value
    for key, value in (explicit or {}).items():
        env[str(key)] = str(value)
    return env, dropped


def _private_tmp_base() -> str | None:
    """tmpfs when there is a usable one, so secret files never reach a disk."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


def yaml_unsafe(value: Any) -> str:
    """A YAML document of ``value`` where every string is tagged !unsafe (never templated by Ansible)."""
    if isinstance(value, str):
        return "!unsafe " + json.dumps(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{" + ", ".join(f"{json.dumps(str(k))}: {yaml_unsafe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_unsafe(v) for v in value) + "]"
    return json.dumps(value)


class SecretFiles:
    """A private 0700 directory (tmpfs if possible, never under the runs directory) of 0600 files, removed by
    :meth:`cleanup`. Use as a context manager."""

    def __init__(self, prefix: str = "tradeops-secrets-") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir=_private_tmp_base()))
        os.chmod(self.dir, 0o700)

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path

    def write_extravars(self, secret_vars: Mapping[str, Any], name: str = "secret_extravars.yml") -> Path:
        return self.write(name, yaml_unsafe(dict(secret_vars)) + "\n")

    def write_env(self, env: Mapping[str, str], name: str = "secret_env.json") -> Path:
        return self.write(name, json.dumps(dict(env)))

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SecretFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
