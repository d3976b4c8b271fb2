"""Secret hygiene for runs through ansible-runner.

Measured with ansible-runner 2.4.3: it writes the whole process environment, unmasked, into
``artifacts/<id>/command``; extra vars into ``env/extravars`` (or onto the recorded command line); every job
event, with its result, into ``job_events/``; and the raw output into ``stdout``. So the runner:

* never hands the caller's environment to Ansible: the child gets an allow-list (PATH, HOME, locale, ANSIBLE_*,
  TRADEOPS_*, ...). Environment secrets that a playbook needs (``secret_env``, and the allow-listed names that
  look secret, such as ``ANSIBLE_HASHI_VAULT_SECRET_ID``) reach ansible-playbook through a 0600 file that a small
  launcher reads, deletes and exports before it execs ansible-playbook (``_launch.py``; with ``--via-worker`` a
  shell launcher sent to the worker with the job); other secret-looking variables are left behind;
* passes secret extra vars (a :class:`Secret` value, a name that looks secret, or a var holding a secret-looking
  key at any depth, ``{"my_db": {"login_password": ...}}``) through a 0600 ``-e @file`` in a private 0700
  directory outside the runs directory (on tmpfs when there is one), removed after the run; their secret values
  are tagged ``!unsafe`` so Ansible never templates them;
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

# Which names hold secrets. A name is split into words (``_ - . space``, camelCase: ``X-Api-Key`` -> x api key,
# ``dbPassword`` -> db password) and a word is a secret word when it ENDS in one, without a word boundary before it
# (``pgpassword``, ``TRADEOPS_PGPASSWORD``, ``ADMIN_PW``, ``MYSQL_PWD``, ``csrftoken``, ``HMAC_SALT``), optionally
# plural. ``key`` counts after a word that makes it a secret key (``api_key``, ``apiKey``, ``private_key``,
# ``AWS_SECRET_ACCESS_KEY``), ``id`` after ``secret`` or ``session`` (``ANSIBLE_HASHI_VAULT_SECRET_ID``): a bare
# ``key`` (a Redis key name, ``key_column``) or ``*_id`` is not a secret.
_SECRET_WORD_RE = re.compile(
    r"[a-z0-9]*(password|passwd|passphrase|passcode|pass|pwd|pw|secret|token|credential|cred|cookie|salt|dsn"
    r"|authorization|auth|sessionid|sessionkey"
    r"|(api|private|access|secret|auth|signing|session|master|hmac|encryption|shared|license|consumer|app|ssh|gpg"
    r"|pgp|jwt|webhook|storage|account)key)s?")
# Ordinary words that end like a secret word.
_NOT_SECRET_WORDS = frozenset("""
    bypass compass surpass trespass overpass underpass impass sacred basalt cobalt asphalt
""".split())
_KEY_QUALIFIERS = frozenset("""
    api private access secret auth signing session master hmac encryption shared license consumer app ssh gpg
    pgp jwt webhook storage account
""".split())
_ID_QUALIFIERS = frozenset(("secret", "session"))
# A secret word followed by one of these names where or what kind of secret, not the secret itself:
# token_header, ANSIBLE_VAULT_PASSWORD_FILE, auth_method, secret_name, credential_type, secret_rotation_staging.
DESCRIPTOR_WORDS = frozenset("""
    file files path paths dir dirs directory header headers url urls uri uris type types kind name names method
    methods mode modes enabled disabled enable required ttl timeout timeouts length len alphabet charset policy
    policies column columns format pattern regex prefix suffix field fields store stores source sources interval
    count counts age expiry expires expiration lifetime fingerprint fingerprints version env var vars algorithm
    algo size retries attempts rotation rotations rotate rotated rotating staging concurrency grace strategy
    location hint label labels mount backend engine provider endpoint id ids sock socket
""".split())
# Words after a secret word that still name the secret (ADMIN_TOKEN_PENDING, secret_value, password2).
_MODIFIER_WORDS = frozenset("""
    value val values new old current cur previous prev pending next b64 base64 hex pem der raw plain plaintext
    clear cleartext enc encoded str string text data
""".split())
# Inside a secret value (``credentials: {user: ops, password: ...}``), the parts that are not secret.
_NOT_SECRET_PARTS = DESCRIPTOR_WORDS | frozenset("""
    user username login host hostname port db database dbname schema region scheme protocol key keys
""".split())
# Environment variables that only look secret.
_NOT_SECRET_NAMES = frozenset(("pwd", "oldpwd"))
_SPLIT_RE = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


# The environment ansible-playbook gets from the caller's. Everything else is left behind.
ENV_ALLOW = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "VIRTUAL_ENV",
    "PYTHONPATH", "SSH_AUTH_SOCK", "KUBECONFIG", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
    "XDG_RUNTIME_DIR", "NO_PROXY", "no_proxy",
})
ENV_ALLOW_PREFIXES = ("LC_", "ANSIBLE_", "TRADEOPS_")


def name_words(name: str) -> list[str]:
    """``name`` split into lower-case words: ``X-Api-Key`` -> ``['x', 'api', 'key']``."""
    return [w.lower() for w in _SPLIT_RE.split(str(name)) if w]


def _secret_word_at(words: list[str], i: int) -> bool:
    word = re.sub(r"(?<=[a-z])\d+$", "", words[i])
    prev = words[i - 1] if i > 0 else ""
    if word in ("key", "keys"):
        return prev in _KEY_QUALIFIERS
    if word in ("id", "ids"):
        return prev in _ID_QUALIFIERS or prev.endswith("secret")
    return word not in _NOT_SECRET_WORDS and bool(_SECRET_WORD_RE.fullmatch(word))


def looks_secret(name: str) -> bool:
    """Whether a variable, key or environment name says it holds a secret: a secret word (see above) that is not
    followed by a word naming where or what kind of secret it is (``token_header``, ``password_file``).

    ``pgpassword``, ``db_pw``, ``TRADEOPS_PGPASSWORD``, ``ANSIBLE_HASHI_VAULT_SECRET_ID``, ``apiKey``,
    ``ADMIN_TOKEN_PENDING`` are secret; ``key_column``, ``token_header``, ``health_gate_passed``,
    ``secret_rotation_staging``, ``passenger``, ``PWD`` are not."""
    words = name_words(name)
    if "".join(words) in _NOT_SECRET_NAMES:
        return False
    for i in range(len(words)):
        if not _secret_word_at(words, i):
            continue
        after = [w for w in words[i + 1:] if w not in _MODIFIER_WORDS and not w.isdigit()]
        if not after or after[0] not in DESCRIPTOR_WORDS:
            return True
    return False


def _names_a_part(name: str) -> bool:
    """A key inside a secret value that holds no secret itself (``user``, ``host``, ``path``, ``key``)."""
    words = name_words(name)
    return bool(words) and words[-1] in _NOT_SECRET_PARTS and not looks_secret(name)


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


def _walk(value: Any, secret: bool = False) -> Iterator[tuple[Any, bool]]:
    """Every scalar of ``value`` with whether it is secret: inside a :class:`Secret`, under a key that looks secret
    at any depth (``{"my_db": {"login_password": ...}}``), or anywhere inside a value whose key looks secret except
    under a key that names a part (``credentials: {user: ops, password: ...}``: ``user`` is not secret)."""
    if isinstance(value, Secret):  # all of it, whatever its keys
        yield from ((leaf, True) for leaf, _ in _walk(value.value))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, looks_secret(str(key)) or (secret and not _names_a_part(str(key))))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk(item, secret)
    else:
        yield value, secret


def _contains_secret(value: Any, secret: bool = False) -> bool:
    return any(s and v is not None for v, s in _walk(value, secret))


def secret_leaves(value: Any, secret: bool = False) -> list[str]:
    """The secret values held in ``value`` (see :func:`_walk`), as strings; booleans and None are not values."""
    return [str(v) for v, s in _walk(value, secret) if s and v is not None and not isinstance(v, bool)]


def unwrap(value: Any) -> Any:
    """``value`` with every :class:`Secret` replaced by what it holds."""
    if isinstance(value, Secret):
        return unwrap(value.value)
    if isinstance(value, Mapping):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [unwrap(v) for v in value]
    return value


def split_extravars(extravars: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plain, secret) extra vars. A var is secret if its name looks secret, or if it holds a secret at any depth
    (a :class:`Secret`, or a value under a secret-looking key): Ansible replaces a var given twice whole, so a var
    that holds a secret goes whole to the secret file. Secret values keep their :class:`Secret` wrappers, so
    ``yaml_unsafe(secret, secret=False)`` and ``secret_leaves(secret)`` find which leaves are secret."""
    plain: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for key, value in (extravars or {}).items():
        if looks_secret(str(key)) or _contains_secret(value):
            secret[str(key)] = value
        else:
            plain[str(key)] = value
    return plain, secret


class Redactor:
    """Masks known secret values anywhere in text or structures, and values under secret-looking keys."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self.add(values)

    def add(self, values: Iterable[Any], secret: bool = True) -> None:
        """Redact these values: with ``secret`` every value and every leaf of a structure (except under keys that
        name a part, see :func:`secret_leaves`), else only the secret leaves (a var with a nested secret)."""
        for value in values:
            for leaf in secret_leaves(value, secret):
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


# What ansible-runner sets for the job it runs. A run started from inside such a job (ansible-rulebook's
# run_playbook of alert_response.yml) must not inherit it: its own ansible-runner sets its own.
RUNNER_JOB_ENV: frozenset[str] = frozenset({
    "AWX_ISOLATED_DATA_DIR", "ANSIBLE_CALLBACK_PLUGINS", "ANSIBLE_STDOUT_CALLBACK", "ORIGINAL_STDOUT_CALLBACK",
    "ANSIBLE_CACHE_PLUGIN", "ANSIBLE_CACHE_PLUGIN_CONNECTION", "ANSIBLE_LOAD_CALLBACK_PLUGINS",
    "RUNNER_OMIT_EVENTS", "RUNNER_ONLY_FAILED_EVENTS", "ANSIBLE_UNSAFE_WRITES",
})


def child_env(parent: Mapping[str, str], explicit: Mapping[str, str] | None = None
              ) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The environment for ansible-playbook: the allow-listed part of ``parent`` plus ``explicit``.

    Returns (env, secret_env, dropped): the allow-listed variables whose names look secret
    (``ANSIBLE_HASHI_VAULT_SECRET_ID``, ``TRADEOPS_PGPASSWORD``) go to ``secret_env``, passed like ``--secret-env``
    (a 0600 file the launcher reads), never recorded; ``dropped`` are the values of the other secret-looking parent
    variables, left behind, for the redactor."""
    env: dict[str, str] = {}
    secret_env: dict[str, str] = {}
    dropped: list[str] = []
    nested = "AWX_ISOLATED_DATA_DIR" in parent  # inside an ansible-runner job: leave its plumbing behind
    for key, value in parent.items():
        if nested and key in RUNNER_JOB_ENV:
            continue
        allowed = key in ENV_ALLOW or key.startswith(ENV_ALLOW_PREFIXES)
        if looks_secret(key):
            if allowed:
                secret_env[key] = value
            else:
                dropped.append(value)
            continue
        if allowed:
            env[key] = value
    for key, value in (explicit or {}).items():
        env[str(key)] = str(value)
    return env, secret_env, dropped


def _private_tmp_base() -> str | None:
    """tmpfs when there is a usable one, so secret files never reach a disk."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


def _yaml_all_unsafe(value: Any) -> str:
    if isinstance(value, str):
        return "!unsafe " + json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_yaml_all_unsafe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_all_unsafe(v) for v in value) + "]"
    return json.dumps(value)


def yaml_unsafe(value: Any, secret: bool = True) -> str:
    """A YAML document of ``value`` where every secret string (see :func:`secret_leaves`; with ``secret`` all of
    them) is tagged !unsafe, never templated by Ansible. Other strings stay plain, templated as in any -e."""
    if isinstance(value, Secret):  # all of it, whatever its keys
        return _yaml_all_unsafe(unwrap(value))
    if isinstance(value, str):
        return ("!unsafe " if secret else "") + json.dumps(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{" + ", ".join(
            f"{json.dumps(str(k))}: {yaml_unsafe(v, looks_secret(str(k)) or (secret and not _names_a_part(str(k))))}"
            for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_unsafe(v, secret) for v in value) + "]"
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
        """The extra vars from :func:`split_extravars`: their secret leaves tagged !unsafe."""
        return self.write(name, yaml_unsafe(dict(secret_vars), secret=False) + "\n")

    def write_env(self, env: Mapping[str, str], name: str = "secret_env.json") -> Path:
        return self.write(name, json.dumps(dict(env)))

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SecretFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
