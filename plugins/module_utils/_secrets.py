# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Staged secret rotation (create, set, test, finish, then revoke), as AWS Secrets Manager does it.

A :class:`Store` holds up to three values: the current one under ``key`` (what clients send), the
previous one under ``previous_key`` (still accepted during a cutover) and a pending one under
``pending_key`` (accepted by the servers that verify the secret, not yet sent by any client).

With ``staging="pending"`` (the default) the new value is first written to ``pending_key`` only;
servers that verify the secret accept it while clients keep sending the current value. Once the
test proves every server accepts it, it is promoted to ``key`` (the old one to ``previous_key``),
so a client that switches never meets a server that refuses it. With ``staging="direct"`` the new
value goes straight to ``key`` (for verifiers that cannot read a pending slot). A failed test
restores the store exactly as it was, so a working credential is never lost.

Values never leave this module: results carry fingerprints (:class:`Fingerprinter`: the first
12 hex digits of an HMAC-SHA256 keyed with the installation's fingerprint key, so that a report
tells "same value" across runs but cannot confirm a guessed value offline), messages name stores,
keys and fingerprints only, and every message is scrubbed of every value of this secret seen
before it is raised or returned. :meth:`RotationService.secret_values` gives the boundary the
values to mask in the module output as well: only this secret's values (current, previous,
pending), never other entries of a store, and none shorter than :data:`MASK_MIN_LENGTH`.

A file store refuses a path whose last component is a symlink, reads with ``O_NOFOLLOW`` and
writes every file mode ``0600`` (or the store's ``mode``, never readable by others): the temp file
is created ``O_EXCL`` with that mode, given the owner of the file, and renamed over it.

Many secrets rotate concurrently in one call (:class:`BatchRotation`), and several of them may live
in the same file, Secret or Vault path. So every write of a store is a read-modify-write done under
a lock and merged per key: it re-reads the store, checks that THIS secret's keys are still what the
rotation read, and changes only those keys. A file is locked by a per-path lock between the threads
of this process and by ``flock`` on its parent directory between processes (the file itself is
replaced by a rename, so a lock on it would lock an inode that is about to go). A Kubernetes Secret
and a Vault KV path are locked per object within the process; between processes, the Secret's
resourceVersion and Vault's check-and-set detect a concurrent writer, and the write is retried on the
fresh object when this secret's own keys are unchanged.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import string
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.tradeops.remediation.plugins.module_utils import _http, _kubernetes
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import Deadline, check_timeout, fan_out
from ansible_collections.tradeops.remediation.plugins.module_utils._redact import redact
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import (
    DEFAULT_TOKEN_HEADER,
    Record,
    merge_token,
    number,
    require,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    BackendError,
    MissingLibraryError,
    TradeopsError,
    ValidationError,
)

STORE_TYPES = ("env_file", "json", "yaml", "kubernetes", "vault_kv2")
ALPHABETS = {
    "hex": "0123456789abcdef",
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "alnum": string.ascii_letters + string.digits,
}
MIN_LENGTH = 16
ABSENT = "(absent)"
NEW_VALUE = "(a new generated value)"


# Values of a secret shorter than this are not masked wherever they occur in the module output
# (nor scrubbed from messages): "1" or "tmp" would mangle every fingerprint, path and time stamp, and
# no such value can be told apart from the words of a path or the hex digits of a fingerprint. They
# never reach the output anyway: results are built from names, paths and fingerprints only.
MASK_MIN_LENGTH = 8


def maskable(values):
    """The values worth masking in output: strings at least :data:`MASK_MIN_LENGTH` long, unique."""
    return sorted(set(v for v in values if isinstance(v, str) and len(v) >= MASK_MIN_LENGTH), key=len, reverse=True)


# --------------------------------------------------------------------------------------------
# fingerprints: keyed, so that a report cannot confirm a guessed value

DEFAULT_KEY_PATH = "~/.ansible/tradeops/fingerprint.key"
KEY_BYTES = 32


class Fingerprinter:
    """``fingerprint(value)``: the first 12 hex digits of HMAC-SHA256(key, value), or None for no value.

    The key is the installation's (:meth:`from_file`): the same value gives the same fingerprint in
    every run that uses that key, while a report alone cannot confirm a guessed value (an unkeyed
    ``sha256(value)`` can be checked offline against a list of weak secrets). ``key_id`` names the key
    without revealing it, so that fingerprints are only compared between results of the same key.
    """

    def __init__(self, key, one_off=False):
        if not isinstance(key, bytes) or len(key) < 16:
            raise ValidationError("a fingerprint key must be at least 16 bytes")
        self._key = key
        self.one_off = one_off
        self.key_id = "one-off" if one_off else hmac.new(key, b"tradeops fingerprint key id", hashlib.sha256).hexdigest()[:8]

    def __call__(self, value):
        if value is None:
            return None
        return hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:12]

    def __repr__(self):
        return "Fingerprinter(key_id=%s)" % self.key_id  # never the key

    @classmethod
    def random(cls):
        """A key of this process only: fingerprints comparable within one run, never across runs."""
        return cls(secrets.token_bytes(KEY_BYTES), one_off=True)

    @classmethod
    def from_file(cls, path, create=True, option="fingerprint_key_path"):
        """The key held in ``path`` (created 0600, with a 0700 directory, on first use when ``create``).

        Without ``create`` (check mode) and no key yet, a one-off key is used and nothing is written.
        The file must be a regular file (not a symlink), readable by its owner only, holding at least
        32 hex digits. Errors name ``option``; the key itself is never put in a message.
        """
        path = os.path.abspath(os.path.expanduser(os.path.expandvars(path or DEFAULT_KEY_PATH)))
        key = cls._read_key(path, option)
        if key is None:
            if not create:
                return cls.random()
            cls._create_key(path, option)
            key = cls._read_key(path, option)
            if key is None:
                raise BackendError("%s: %s vanished right after it was created; re-run" % (option, path))
        return cls(key)

    @staticmethod
    def _read_key(path, option):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ValidationError("%s: %s is a symlink; refused: give the path of the key file itself" % (option, path))
            raise ValidationError("%s: cannot read %s: %s" % (option, path, err.strerror or err))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValidationError("%s: %s is not a regular file" % (option, path))
            if st.st_mode & 0o077:
                raise ValidationError("%s: %s is readable or writable by others (mode %04o): it must be 0600; "
                                      "replace the key (fingerprints made with it may be forged), or chmod 600 it "
                                      "if nobody else read it" % (option, path, stat.S_IMODE(st.st_mode)))
            if st.st_uid != os.geteuid():
                raise ValidationError("%s: %s belongs to uid %d, not to the user running the module (uid %d)"
                                      % (option, path, st.st_uid, os.geteuid()))
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        text = data.strip()
        try:
            key = binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) < 16:
            raise ValidationError("%s: %s does not hold a key (at least 32 hex digits); move it away and re-run to "
                                  "create one" % (option, path))
        return key

    @staticmethod
    def _create_key(path, option):
        """Write a new random key to ``path``, atomically: a 0600 temp file linked into place (two runs
        creating it at once keep the first one's key)."""
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as err:
            raise BackendError("%s: cannot create the directory %s: %s" % (option, directory, err.strerror or err))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".fingerprint-", dir=directory)
        except OSError as err:
            raise BackendError("%s: cannot create %s: %s" % (option, path, err.strerror or err))
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, binascii.hexlify(secrets.token_bytes(KEY_BYTES)) + b"\n")
            os.fsync(fd)
            os.close(fd)
            fd = None
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another run created it first: its key is the installation's
        except OSError as err:
            raise BackendError("%s: cannot create %s: %s" % (option, path, err.strerror or err))
        finally:
            if fd is not None:
                os.close(fd)
            os.unlink(tmp)


_ONE_OFF = []
_ONE_OFF_GUARD = threading.Lock()


def one_off_fingerprinter():
    """The fingerprinter of stores built without one (tests, direct use): a key of this process only."""
    with _ONE_OFF_GUARD:
        if not _ONE_OFF:
            _ONE_OFF.append(Fingerprinter.random())
        return _ONE_OFF[0]


def generate(length=32, alphabet="urlsafe"):
    """A new random value from the ``secrets`` module."""
    if alphabet not in ALPHABETS:
        raise ValidationError("generate.alphabet must be one of %s, got %r" % (", ".join(sorted(ALPHABETS)), alphabet))
    if not isinstance(length, int) or length < MIN_LENGTH or length > 4096:
        raise ValidationError("generate.length must be between %d and 4096, got %r" % (MIN_LENGTH, length))
    chars = ALPHABETS[alphabet]
    return "".join(secrets.choice(chars) for dummy in range(length))


generate_value = generate  # for the code whose ``generate`` argument hides the function


def _suffixed(key, suffix):
    last = key.rsplit(".", 1)[-1]
    return key + ("_" + suffix.upper() if last.isupper() else "_" + suffix.lower())


def default_previous_key(key):
    """``API_TOKEN`` -> ``API_TOKEN_PREVIOUS``; ``db.password`` -> ``db.password_previous``."""
    return _suffixed(key, "previous")


def default_pending_key(key):
    """``API_TOKEN`` -> ``API_TOKEN_PENDING``; ``db.password`` -> ``db.password_pending``."""
    return _suffixed(key, "pending")


SLOTS = ("current", "previous", "pending")
STAGINGS = ("pending", "direct")


class StoreConflict(BackendError):
    """The store changed between the read and the write (HTTP 409, a failed check-and-set)."""


class RotationFailed(BackendError):
    """The rotation failed. ``result`` is the (secret-free) result so far, for the module to return."""

    def __init__(self, message, result):
        super(RotationFailed, self).__init__(message)
        self.result = result


# --------------------------------------------------------------------------------------------
# locks: every read-modify-write of one store object is serialized

LOCK_WAIT = 30.0  # seconds to wait for a lock when the caller has no deadline
CONFLICT_RETRIES = 3
_LOCKS_GUARD = threading.Lock()
_LOCKS = {}


def object_lock(key):
    """The process-wide lock of one store object (a file path, a Secret, a Vault path)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = threading.Lock()
        return lock


def _wait_for(deadline):
    return LOCK_WAIT if deadline is None else max(deadline.remaining(), 0.05)


@contextlib.contextmanager
def held(key, deadline, what):
    """Hold the process-wide lock of ``key`` (another thread of this task may be writing ``what``)."""
    lock = object_lock(key)
    wait = _wait_for(deadline)
    if not lock.acquire(True, wait):
        raise BackendError("%s stayed locked by another secret of this task for %.1fs; nothing was changed: raise "
                           "timeout or lower concurrency, and re-run" % (what, wait))
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def file_lock(path, deadline):
    """Serialize every read-modify-write of the file ``path``.

    Between the threads of this process: a lock per path. Between processes (two operators rotating
    keys of one file): ``flock`` on the parent directory, opened O_RDONLY|O_DIRECTORY. Not on the file:
    a write replaces it by a rename, so a lock on the file would lock the inode that is going away.
    """
    directory = os.path.dirname(path) or "."
    with held(("file", path), deadline, path):
        try:
            dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as err:
            raise BackendError("cannot lock %s: cannot open its directory %s: %s; nothing was changed"
                               % (path, directory, err.strerror or err))
        try:
            wait = _wait_for(deadline)
            until = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(dfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise BackendError("cannot lock %s (flock on %s): %s; nothing was changed"
                                           % (path, directory, err.strerror or err))
                if time.monotonic() >= until:
                    raise BackendError("%s stayed locked (flock on %s) by another process for %.1fs: another "
                                       "rotation is writing it; nothing was changed: re-run once it is done"
                                       % (path, directory, wait))
                time.sleep(0.005)
            yield
        finally:
            os.close(dfd)  # releases the flock


# --------------------------------------------------------------------------------------------
# files: atomic writes that keep the owner and end mode 0600 (or store.mode), 0600 backups


def backup_file(path, data):
    """Write ``data`` to a new 0600 file next to ``path``, named after it and the time; return its path."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + ".%06d" % (int(time.time() * 1e6) % 1000000)
    for attempt in range(100):
        dest = "%s.%s.%d%s.bak" % (path, stamp, os.getpid(), ("-%d" % attempt) if attempt else "")
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        except OSError as err:
            raise BackendError("cannot create a backup of %s: %s; nothing was changed" % (path, err.strerror))
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            raise BackendError("cannot write the backup %s: %s; nothing was changed" % (dest, err.strerror))
        return dest
    raise BackendError("cannot find a free backup name for %s; nothing was changed" % path)


def atomic_write(path, data, mode, uid, gid):
    """Replace ``path`` by ``data`` atomically (temp file in the same directory + rename).

    The temp file is created ``O_EXCL`` and mode 0600 (``mkstemp``), never readable by anyone else;
    it gets ``uid``/``gid`` and ``mode`` through its descriptor before any data is written and
    before the rename, so the file never exists with other permissions or another owner. The
    rename replaces a symlink at ``path`` itself, never its target.
    """
    if mode & ~0o770:
        raise ValidationError("a secret file cannot be written with mode %04o: nothing for others" % mode)
    directory = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".%s.tradeops-" % os.path.basename(path), dir=directory)
    except OSError as err:
        raise BackendError("cannot write %s: cannot create a temp file in %s: %s; nothing was changed"
                           % (path, directory, err.strerror or err))
    try:
        with os.fdopen(fd, "wb") as fh:
            if (uid, gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fh.fileno(), uid, gid)
                except PermissionError:
                    raise BackendError("cannot keep the owner %d:%d of %s (run the task with become); nothing was "
                                       "changed" % (uid, gid, path))
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        try:
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except OSError as err:
        raise BackendError("cannot write %s: %s" % (path, err.strerror or err))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Snapshot:
    """What a store held before a write: the values by slot, plus what it takes to restore it exactly."""

    def __init__(self, values, state):
        self.values = dict((slot, values.get(slot)) for slot in SLOTS)
        self.state = state

    @property
    def current(self):
        return self.values["current"]

    @property
    def previous(self):
        return self.values["previous"]

    @property
    def pending(self):
        return self.values["pending"]


class Store:
    """A place that holds a secret under ``key`` (current), ``previous_key`` and ``pending_key``."""

    type = None
    backs_up = False

    def __init__(self, spec, fingerprint=None):
        self.spec = spec
        # every fingerprint of this secret (results, messages, diffs) is made with this one
        self.fingerprint = fingerprint or one_off_fingerprinter()
        self.key = spec.get("key")
        if not self.key or not isinstance(self.key, str):
            raise ValidationError("store.key is required")
        self.previous_key = spec.get("previous_key") or default_previous_key(self.key)
        self.pending_key = spec.get("pending_key") or default_pending_key(self.key)
        if len(set((self.key, self.previous_key, self.pending_key))) != 3:
            raise ValidationError("store.key (%s), store.previous_key (%s) and store.pending_key (%s) must all differ"
                                  % (self.key, self.previous_key, self.pending_key))
        self.keys = {"current": self.key, "previous": self.previous_key, "pending": self.pending_key}

    def describe(self):
        raise NotImplementedError

    def read(self, deadline):
        """A :class:`Snapshot` of the store."""
        raise NotImplementedError

    def write(self, snapshot, values, deadline):
        """Set each slot (``current``, ``previous``, ``pending``) of ``values``; None removes it.

        ``snapshot`` is what :meth:`read` returned before. Under the store's lock, the store is read
        again; if this secret's keys no longer hold what ``snapshot`` holds, nothing is written
        (:class:`BackendError`); else only this secret's keys change, whatever else changed meanwhile.
        Returns a backup path or None.
        """
        raise NotImplementedError

    def restore(self, snapshot, deadline):
        """Put this secret's keys back as they were in ``snapshot`` (the rest of the store as it is now)."""
        raise NotImplementedError

    def check_unchanged(self, snapshot, now):
        """Raise when this secret's keys in ``now`` differ from ``snapshot`` (another writer of this secret)."""
        if now.values == snapshot.values:
            return
        changed = [self.keys[slot] for slot in SLOTS if now.values[slot] != snapshot.values[slot]]
        raise BackendError("%s changed during the rotation (%s now %s): another rotation of this secret is "
                           "running; this write was not made: re-run once it is done"
                           % (self.describe(), ", ".join(changed),
                              ", ".join("fingerprint %s" % (self.fingerprint(now.values[slot]) or ABSENT)
                                        for slot in SLOTS if now.values[slot] != snapshot.values[slot])))

    def with_conflict_retries(self, deadline, once):
        """``once()`` under this object's lock, tried again (up to CONFLICT_RETRIES times in all) when another
        process wrote the object in between (:class:`StoreConflict`: a stale resourceVersion or CAS version)."""
        with held(self._lock_key(), deadline, self.describe()):
            for attempt in range(CONFLICT_RETRIES):
                try:
                    return once()
                except StoreConflict:
                    if attempt == CONFLICT_RETRIES - 1:
                        raise
        return None


class FileStore(Store):
    """A file on the module's host. Subclasses parse and render its text."""

    backs_up = True
    format_name = None

    def __init__(self, spec, backup=True, fingerprint=None):
        super(FileStore, self).__init__(spec, fingerprint)
        require(spec, ("path",), "store", "store type %s" % self.type)
        path = os.path.expanduser(os.path.expandvars(spec["path"]))
        if not os.path.isabs(path):
            raise ValidationError("store.path must be absolute, got %r" % path)
        # the directories on the way are resolved (one lock per file, whatever the path that names it);
        # the file itself must not be a symlink: whoever can replace it by one would choose what is read
        # and where the secret is written
        self.path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if os.path.islink(self.path):
            raise ValidationError("store.path %s is a symlink (to %s): refused, a secret is only written to the file "
                                  "itself; give the real path" % (path, os.readlink(self.path)))
        self.mode = self._mode(spec.get("mode"))
        self.backup = backup
        # what this store's own writes did, for an exact restore: the bytes before its first write and
        # after its last, and whether every write started from the bytes of the one before (nobody
        # else wrote the file in between)
        self._base = None
        self._written = None
        self._chain = True

    @staticmethod
    def _mode(value):
        """``store.mode``: 0600 by default; group bits may be given (a consumer that reads through its
        group), bits for others never."""
        if value is None or value == "":
            return 0o600
        try:
            mode = int(str(value), 8) if not isinstance(value, int) else value
        except ValueError:
            raise ValidationError("store.mode must be an octal mode such as '0600' or '0640', got %r" % (value,))
        if mode & ~0o660 or not mode & 0o600:
            raise ValidationError("store.mode must give read (and write) to the owner, optionally to the group, "
                                  "and nothing to others or execute (at most 0660), got %r" % (value,))
        return mode

    def describe(self):
        return "%s %s" % (self.type, self.path)

    def read(self, deadline):
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise ValidationError("%s does not exist: create it (with the consumers' current secret) first" % self.path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ValidationError("store.path %s is a symlink: refused, a secret is only read from and written to "
                                      "the file itself" % self.path)
            raise BackendError("cannot read %s: %s" % (self.path, err.strerror))
        try:
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise ValidationError("store.path %s is not a regular file" % self.path)
                raw = fh.read()
        except OSError as err:
            raise BackendError("cannot read %s: %s" % (self.path, err.strerror))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError("%s is not UTF-8 text" % self.path)
        return Snapshot(self.parse(text), {"raw": raw, "text": text, "mode": st.st_mode & 0o7777,
                                           "uid": st.st_uid, "gid": st.st_gid})

    def write(self, snapshot, values, deadline):
        with file_lock(self.path, deadline):
            # the file as it is now: other secrets of this file may have been written since ``snapshot``
            now = self.read(deadline)
            self.check_unchanged(snapshot, now)
            st = now.state
            data = self.render(st["text"], values).encode("utf-8")
            backup = backup_file(self.path, st["raw"]) if self.backup else None
            atomic_write(self.path, data, self.mode, st["uid"], st["gid"])
            if self._written is None:
                self._base = st["raw"]
            elif st["raw"] != self._written:
                self._chain = False
            self._written = data
        return backup

    def restore(self, snapshot, deadline):
        with file_lock(self.path, deadline):
            now = self.read(deadline)
            st = now.state
            if self._written is not None and self._chain and st["raw"] == self._written:
                # nobody else wrote the file since this rotation's first write: the same bytes as before it
                data = self._base
            else:
                # other secrets of this file were written meanwhile: put back this secret's keys only
                data = self.render(st["text"], snapshot.values).encode("utf-8")
            atomic_write(self.path, data, self.mode, st["uid"], st["gid"])
            self._base, self._written, self._chain = None, None, True

    def parse(self, text):
        """The values by slot."""
        raise NotImplementedError

    def render(self, text, values):
        """``text`` with each slot of ``values`` set (None: removed)."""
        raise NotImplementedError


ENV_LINE = re.compile(r"^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_.]*)(\s*=\s*)(.*?)(\r?\n)?$")
ENV_SAFE = re.compile(r"^[A-Za-z0-9_\-.+/=:@%,~^]*$")


class EnvFileStore(FileStore):
    """``KEY=value`` lines. Other lines, comments and the order are kept as they are.

    A value is taken literally, less one pair of matching surrounding quotes. A new value is
    written bare when it is made of safe characters, else in single quotes.
    """

    type = "env_file"

    def _lines(self, text):
        lines = text.splitlines(True)
        found = {}
        for i, line in enumerate(lines):
            if line.lstrip().startswith("#"):
                continue
            m = ENV_LINE.match(line)
            if m:
                found.setdefault(m.group(2), []).append(i)
        for key in self.keys.values():
            if len(found.get(key, [])) > 1:
                raise ValidationError("%s sets %s %d times: keep one line and re-run"
                                      % (self.path, key, len(found[key])))
        return lines, dict((k, v[0]) for k, v in found.items())

    @staticmethod
    def _unquote(value):
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            return value[1:-1]
        return value

    def _quote(self, value, key):
        if "\n" in value or "\r" in value or "\0" in value:
            raise ValidationError("a value for %s cannot contain a line break in an env file" % key)
        if ENV_SAFE.match(value):
            return value
        if "'" not in value:
            return "'%s'" % value
        raise ValidationError("a value for %s contains a single quote and characters that need quoting; "
                              "it cannot be written to an env file safely" % key)

    def parse(self, text):
        lines, index = self._lines(text)

        def value(key):
            if key not in index:
                return None
            return self._unquote(ENV_LINE.match(lines[index[key]]).group(4))

        return dict((slot, value(key)) for slot, key in self.keys.items())

    def render(self, text, values):
        lines, index = self._lines(text)

        def line_for(key, value, old_line=None):
            if old_line is None:
                return "%s=%s\n" % (key, self._quote(value, key))
            m = ENV_LINE.match(old_line)
            return "%s%s%s%s%s" % (m.group(1), key, m.group(3), self._quote(value, key), m.group(5) or "")

        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        # new lines go right after the current key's line (or at the end), previous before pending
        slots = [slot for slot in SLOTS if slot in values]
        anchor = index.get(self.key)
        added = {}
        for slot in slots:
            key, value = self.keys[slot], values[slot]
            if key in index:
                lines[index[key]] = None if value is None else line_for(key, value, lines[index[key]])
            elif value is not None:
                added.setdefault(anchor if slot != "current" else None, []).append(line_for(key, value))
        out = []
        for i, line in enumerate(lines):
            if line is not None:
                out.append(line)
            out.extend(added.get(i, []))
        out.extend(added.get(None, []))
        return "".join(out)


class DocumentStore(FileStore):
    """A JSON or YAML document; ``key`` and ``previous_key`` are dotted paths of string values."""

    def _load(self, text):
        raise NotImplementedError

    def _dump(self, doc, text):
        raise NotImplementedError

    def _document(self, text):
        doc = self._load(text)
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ValidationError("%s must hold a %s mapping at the top" % (self.path, self.format_name))
        return doc

    def _get(self, doc, path):
        value = doc
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        if value is not None and not isinstance(value, str):
            raise ValidationError("%s: %s holds a %s, not a string" % (self.path, path, type(value).__name__))
        return value

    def _set(self, doc, path, value):
        parts = path.split(".")
        node = doc
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                if value is None:
                    return
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValidationError("%s: %s is not a mapping" % (self.path, ".".join(parts[:i + 1])))
            node = child
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value

    def parse(self, text):
        doc = self._document(text)
        return dict((slot, self._get(doc, key)) for slot, key in self.keys.items())

    def render(self, text, values):
        doc = self._document(text)
        for slot in SLOTS:
            if slot in values:
                self._set(doc, self.keys[slot], values[slot])
        return self._dump(doc, text)


class JsonStore(DocumentStore):
    """A JSON file. Key order is kept; the file is rewritten with its indentation (default 2)."""

    type = "json"
    format_name = "JSON"

    def _load(self, text):
        try:
            return json.loads(text) if text.strip() else {}
        except ValueError as err:
            # never the document itself: it holds secrets
            raise ValidationError("%s is not valid JSON (line %s, column %s)"
                                  % (self.path, getattr(err, "lineno", "?"), getattr(err, "colno", "?")))

    def _dump(self, doc, text):
        indent = None
        if "\n" in text.strip():
            m = re.search(r"\n([ \t]+)\S", text)
            indent = m.group(1) if m else 2
        return json.dumps(doc, indent=indent, ensure_ascii=False) + "\n"


class YamlStore(DocumentStore):
    """A YAML file. Key order is kept; comments are not (the file is re-dumped)."""

    type = "yaml"
    format_name = "YAML"

    def _yaml(self):
        try:
            import yaml
        except ImportError:
            raise MissingLibraryError("PyYAML", "the yaml store")
        return yaml

    def _load(self, text):
        yaml = self._yaml()
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            # never str(err): PyYAML quotes the offending line, which may hold a secret
            mark = getattr(err, "problem_mark", None)
            where = (" (line %d, column %d)" % (mark.line + 1, mark.column + 1)) if mark else ""
            raise ValidationError("%s is not valid YAML%s" % (self.path, where))

    def _dump(self, doc, text):
        yaml = self._yaml()
        out = yaml.safe_dump(doc, default_flow_style=False, sort_keys=False, allow_unicode=True)
        if text.lstrip().startswith("---"):
            out = "---\n" + out
        return out


class KubernetesSecretStore(Store):
    """A key of a Kubernetes Secret's ``data`` (base64). Writes are patches guarded by resourceVersion."""

    type = "kubernetes"

    def __init__(self, spec, fingerprint=None):
        super(KubernetesSecretStore, self).__init__(spec, fingerprint)
        self.name = spec.get("name")
        if not self.name:
            raise ValidationError("store.name (the Secret) is required for store type kubernetes")
        for key in self.keys.values():
            if not re.match(r"^[-._a-zA-Z0-9]+$", key):
                raise ValidationError("%r is not a valid key of a Secret's data ([-._a-zA-Z0-9]+)" % key)
        # the connection (api_url + api_key, or kubeconfig + context) and the namespace, validated once
        self.k8s = _kubernetes.kubernetes_options(spec, "store")
        self.namespace = self.k8s.namespace

    def describe(self):
        return "kubernetes secret %s/%s" % (self.namespace, self.name)

    def _lock_key(self):
        return ("kubernetes",) + self.k8s.lock_key() + (self.namespace, self.name)

    def _call(self, deadline, fn):
        def missing(err):
            return ValidationError("%s does not exist: create it first" % self.describe())

        def conflict(err):
            return StoreConflict("%s changed while rotating (HTTP 409 Conflict): re-run" % self.describe())

        return _kubernetes.call(self.k8s, deadline, fn, self.describe(), api="core", purpose="the kubernetes store",
                                on_status={404: missing, 409: conflict})

    def _decode(self, data, key):
        raw = (data or {}).get(key)
        if raw is None:
            return None
        try:
            return base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise ValidationError("%s: data.%s is not base64 of UTF-8 text" % (self.describe(), key))

    def read(self, deadline):
        secret = self._call(deadline, lambda api, t: api.read_namespaced_secret(
            self.name, self.namespace, _request_timeout=t))
        data = dict(secret.data or {})
        return Snapshot(dict((slot, self._decode(data, key)) for slot, key in self.keys.items()),
                        {"data": data, "resource_version": secret.metadata.resource_version})

    @staticmethod
    def _b64(value):
        return None if value is None else base64.b64encode(value.encode("utf-8")).decode("ascii")

    def write(self, snapshot, values, deadline):
        # other keys of this Secret may be rotated by other threads of this task (the lock) or by another
        # process (the resourceVersion of the fresh read guards the patch; on a conflict, read and retry)
        def once():
            now = self.read(deadline)
            self.check_unchanged(snapshot, now)
            # a merge patch of this secret's keys only: a key set to null is removed
            body = {"metadata": {"resourceVersion": now.state["resource_version"]},
                    "data": dict((self.keys[slot], self._b64(value)) for slot, value in values.items())}
            self._call(deadline, lambda api, t: api.patch_namespaced_secret(
                self.name, self.namespace, body, _request_timeout=t))

        self.with_conflict_retries(deadline, once)

    def restore(self, snapshot, deadline):
        old = snapshot.state["data"]

        def put(api, t):
            # this secret's keys back as they were (the same base64), the other keys as they are now
            secret = api.read_namespaced_secret(self.name, self.namespace, _request_timeout=t)
            data = dict(secret.data or {})
            for key in self.keys.values():
                if old.get(key) is None:
                    data.pop(key, None)
                else:
                    data[key] = old[key]
            secret.data = data or None
            return api.replace_namespaced_secret(self.name, self.namespace, secret, _request_timeout=t)

        self.with_conflict_retries(deadline, lambda: self._call(deadline, put))


class VaultKv2Store(Store):
    """A key of a HashiCorp Vault KV v2 secret, through hvac (as community.hashi_vault.vault_kv2_write).

    Every write is a new version with check-and-set on the version read just before (under the
    path's lock), so a concurrent writer is detected, never overwritten; the write is then retried on
    the fresh version when this secret's keys are unchanged. Other keys of the secret are kept.
    """

    type = "vault_kv2"

    def __init__(self, spec, fingerprint=None):
        super(VaultKv2Store, self).__init__(spec, fingerprint)
        require(spec, ("url", "path", "token"), "store", "store type vault_kv2")
        _http.check_url(spec["url"], "store.url")
        self.transport = _http.http_options(spec, "store", token="", headers=False)  # the Vault token goes to hvac
        self.mount_point = spec.get("mount_point") or "secret"
        self.path = str(spec["path"]).strip("/")

    def describe(self):
        return "vault_kv2 %s/%s" % (self.mount_point, self.path)

    def _lock_key(self):
        return ("vault_kv2", str(self.spec["url"]).rstrip("/"), self.mount_point, self.path)

    def _call(self, deadline, fn):
        try:
            import hvac
            from hvac import exceptions as hvac_exceptions
        except ImportError:
            raise MissingLibraryError("hvac", "the vault_kv2 store")
        spec, transport = self.spec, self.transport
        verify = transport.ca_path or transport.validate_certs
        cert = (transport.client_cert, transport.client_key) if transport.client_key else transport.client_cert
        proxies = {"http": transport.proxy, "https": transport.proxy} if transport.proxy else None
        client = hvac.Client(url=spec["url"], token=spec["token"], verify=verify, cert=cert, proxies=proxies,
                             timeout=deadline.call_timeout())
        try:
            return fn(client.secrets.kv.v2, hvac_exceptions)
        except TradeopsError:
            raise
        except hvac_exceptions.Forbidden:
            raise BackendError("%s: permission denied: the token needs read, create and update capabilities on "
                               "%s/data/%s" % (self.describe(), self.mount_point, self.path))
        except hvac_exceptions.InvalidRequest as err:
            if "check-and-set" in str(err):
                raise StoreConflict("%s changed while rotating (check-and-set failed): re-run" % self.describe())
            raise BackendError("%s: %s" % (self.describe(), type(err).__name__))
        except hvac_exceptions.VaultError as err:
            raise BackendError("%s: %s" % (self.describe(), type(err).__name__))
        except Exception as err:  # noqa: BLE001 - requests' connection errors and timeouts
            raise BackendError("%s: cannot reach %s: %s" % (self.describe(), spec["url"], type(err).__name__))
        finally:
            try:
                client.adapter.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def read(self, deadline):
        def read(kv, exc):
            try:
                resp = kv.read_secret_version(path=self.path, mount_point=self.mount_point,
                                              raise_on_deleted_version=True)
            except exc.InvalidPath:
                return {}, 0
            return dict(resp["data"]["data"] or {}), int(resp["data"]["metadata"]["version"])

        data, version = self._call(deadline, read)
        values = dict((slot, data.get(key)) for slot, key in self.keys.items())
        for slot, value in values.items():
            if value is not None and not isinstance(value, str):
                raise ValidationError("%s: %s holds a %s, not a string"
                                      % (self.describe(), self.keys[slot], type(value).__name__))
        return Snapshot(values, {"data": data, "version": version})

    def _put(self, now, data, deadline):
        self._call(deadline, lambda kv, exc: kv.create_or_update_secret(
            path=self.path, secret=data, cas=now.state["version"], mount_point=self.mount_point))

    def write(self, snapshot, values, deadline):
        def once():
            # the newest version: other keys of this path may have been written since ``snapshot``
            now = self.read(deadline)
            self.check_unchanged(snapshot, now)
            data = dict(now.state["data"])
            for slot, value in values.items():
                if value is None:
                    data.pop(self.keys[slot], None)
                else:
                    data[self.keys[slot]] = value
            self._put(now, data, deadline)

        self.with_conflict_retries(deadline, once)

    def restore(self, snapshot, deadline):
        old = snapshot.state["data"]

        def once():
            now = self.read(deadline)
            data = dict(now.state["data"])
            for key in self.keys.values():
                if key in old:
                    data[key] = old[key]
                else:
                    data.pop(key, None)
            if snapshot.state["version"] == 0 and not data:
                # the secret did not exist and nothing else was written there: remove it again, with
                # every version written since
                self._call(deadline, lambda kv, exc: kv.delete_metadata_and_all_versions(
                    path=self.path, mount_point=self.mount_point))
                return
            # KV v2 keeps history: the restore is a new version, this secret's keys as they were
            self._put(now, data, deadline)

        self.with_conflict_retries(deadline, once)


def build_store(spec, backup=True, fingerprint=None):
    """The store of ``spec``; ``fingerprint`` is the :class:`Fingerprinter` of its results (default a
    one-off key of this process)."""
    kind = spec.get("type")
    if spec.get("mode") is not None and kind not in ("env_file", "json", "yaml"):
        raise ValidationError("store.mode applies to file stores only (env_file, json, yaml), not %s" % kind)
    if kind == "env_file":
        return EnvFileStore(spec, backup, fingerprint)
    if kind == "json":
        return JsonStore(spec, backup, fingerprint)
    if kind == "yaml":
        return YamlStore(spec, backup, fingerprint)
    if kind == "kubernetes":
        return KubernetesSecretStore(spec, fingerprint)
    if kind == "vault_kv2":
        return VaultKv2Store(spec, fingerprint)
    raise ValidationError("store.type must be one of %s, got %r" % (", ".join(STORE_TYPES), kind))


# --------------------------------------------------------------------------------------------
# the test probe and the revoke call


class HttpTest:
    """An HTTP request carrying a value in a header, sent to every URL of the test.

    A value is accepted when every URL answers with one of ``status``, refused when none does.
    """

    def __init__(self, spec):
        spec = spec or {}
        # each URL with the option that gave it, for messages: test.url, test.urls[0], ...
        named = [("test.urls[%d]" % i, url) for i, url in enumerate(spec.get("urls") or [])]
        if spec.get("url"):
            named.insert(0, ("test.url", spec["url"]))
        if not named:
            raise ValidationError("test.url or test.urls is required")
        self.urls = list(dict.fromkeys(_http.check_url(url, option) for option, url in named))
        self.url = self.urls[0]
        self.method = (spec.get("method") or "GET").upper()
        self.header = spec.get("header") or DEFAULT_TOKEN_HEADER
        self.prefix = spec.get("prefix") or ""
        self.status = list(spec.get("status") or [200])
        self.timeout = check_timeout(spec.get("timeout") if spec.get("timeout") is not None else 10.0, "test.timeout")
        self.interval = check_timeout(spec.get("interval") if spec.get("interval") is not None else 0.5,
                                      "test.interval")
        self.concurrency = number(spec.get("concurrency"), "test.concurrency", integer=True, minimum=1, default=32)
        # the value under test goes in ``header`` of each request, not a token option
        self.client = _http.client(_http.http_options(spec, "test", token=""))
        self.old_must_fail = spec.get("old_must_fail")

    def describe(self):
        if len(self.urls) == 1:
            return "%s %s" % (self.method, self.url)
        return "%s %s (and %d more URLs)" % (self.method, self.url, len(self.urls) - 1)

    def _one(self, url, value, deadline):
        try:
            resp = self.client.request(url, self.method, headers=merge_token(None, value, self.header, self.prefix),
                                       deadline=deadline, cap=5.0)
        except BackendError as err:
            return False, str(err)
        return resp.status in self.status, "%s %s answered HTTP %d" % (self.method, url, resp.status)

    def attempt(self, value, deadline, urls=None):
        """{url: (accepted, what happened)} for one request to each URL, sent concurrently."""
        urls = list(self.urls if urls is None else urls)
        if len(urls) == 1:
            return {urls[0]: self._one(urls[0], value, deadline)}
        budget = max(0.1, min(deadline.remaining(), 5.0))
        results = fan_out(urls, lambda url, d: self._one(url, value, d), min(self.concurrency, len(urls)), budget,
                          lambda url, elapsed, exc: (False, "%s %s: %s" % (
                              self.method, url, "no answer in %.1fs" % budget if exc is None else exc)))
        return dict((url, results[i]) for i, url in enumerate(urls))

    def wait_for(self, value, accepted):
        """Poll until every URL accepts the value (or refuses it, with ``accepted=False``) or the test
        times out. A URL that has answered as wanted is not asked again. Returns (ok, detail, tries)."""
        deadline = Deadline(self.timeout)
        waiting = list(self.urls)
        tries = 0
        last = {}
        while True:
            tries += 1
            answers = self.attempt(value, deadline, waiting)
            last.update(answers)
            waiting = [url for url in waiting if answers[url][0] != accepted]
            if not waiting:
                detail = last[self.url][1] if len(self.urls) == 1 else "all %d URLs: %s" % (
                    len(self.urls), "accepted" if accepted else "refused")
                return True, detail, tries
            if deadline.remaining() <= self.interval:
                detail = "; ".join(last[url][1] for url in waiting[:3])
                if len(waiting) > 3:
                    detail += "; and %d more URLs" % (len(waiting) - 3)
                return False, detail, tries
            time.sleep(self.interval)


class HttpRevoke:
    """A user-defined revoke endpoint: the previous value is sent in a JSON body field."""

    def __init__(self, spec):
        self.url = _http.check_url(spec.get("url"), "revoke.url")
        self.method = (spec.get("method") or "POST").upper()
        self.header = spec.get("header") or DEFAULT_TOKEN_HEADER
        self.prefix = spec.get("prefix") or ""
        self.token = spec.get("token")
        self.body_field = spec.get("body_field") or "token"
        self.status = list(spec.get("status") or [200, 201, 202, 204])
        self.client = _http.client(_http.http_options(spec, "revoke", token="", headers=False))

    def call(self, old, new, deadline):
        resp = self.client.request(self.url, self.method, body={self.body_field: old},
                                   headers=merge_token(None, self.token or new, self.header, self.prefix),
                                   deadline=deadline, cap=10.0)
        if resp.status not in self.status:
            raise BackendError("revoke %s %s answered HTTP %d" % (self.method, self.url, resp.status))
        return "%s %s answered HTTP %d" % (self.method, self.url, resp.status)


# --------------------------------------------------------------------------------------------
# the rotation


class RotationResult(Record):
    """What one rotation did, so far: every field declared here, whatever branch the rotation took.

    :meth:`as_dict` is the module's result (``diff`` and ``msg`` only once set), and the only place it
    is built.
    """

    __slots__ = ("changed", "store", "fingerprint_key_id", "fingerprint", "previous_fingerprint",
                 "pending_fingerprint", "revoked_fingerprint", "stage", "rolled_back", "steps", "backup_files",
                 "diff", "msg")
    OPTIONAL = ("diff", "msg")
    DEFAULTS = {"changed": False, "rolled_back": False}

    def __init__(self, **values):
        super(RotationResult, self).__init__(**values)
        self.steps = []
        self.backup_files = []

    def as_dict(self):
        out = {}
        for field in self.__slots__:
            value = getattr(self, field)
            if field not in self.OPTIONAL or value is not None:
                out[field] = value
        return out


class RevokePlan(Record):
    """What :meth:`RotationService.rotate` leaves for :meth:`RotationService.revoke_previous_value`.

    ``snap``: the store as read (None: read it again after the grace); ``current``: the value that stays;
    ``grace``: whether clients must be given time before the revocation; ``which``: "current" or "new",
    for the grace's message; ``diff_before`` / ``unchanged_diff``: what the diff shows once revoked.
    """

    __slots__ = ("snap", "current", "grace", "which", "diff_before", "unchanged_diff")


class RotationService:
    """create -> set -> test -> finish, then optionally revoke and re-test. See the module doc."""

    def __init__(self, store, value=None, generate=None, test=None, revoke_previous=False, revoke=None,
                 timeout=30.0, check_mode=False, staging="pending", revoke_grace=0.0, revoke_only=False,
                 sleep=time.sleep):
        self.store = store
        self.revoke_only = bool(revoke_only)
        if self.revoke_only:
            if value is not None or generate:
                raise ValidationError("revoke_only revokes the previous value and creates none: drop value and generate")
            revoke_previous = True
        if staging not in STAGINGS:
            raise ValidationError("staging must be one of %s, got %r" % (", ".join(STAGINGS), staging))
        self.staging = staging
        self.revoke_grace = check_timeout(revoke_grace or 0.0, "revoke_grace", minimum=0.0)
        self._sleep = sleep
        self.value = value
        self.generate_spec = generate or {}
        if value is not None:
            if not isinstance(value, str) or value == "":
                raise ValidationError("value must be a non-empty string")
        elif not self.revoke_only:
            generate_length = self.generate_spec.get("length")
            generate_alphabet = self.generate_spec.get("alphabet")
            # validated now, before anything is read or written
            generate_value(32 if generate_length is None else generate_length, generate_alphabet or "urlsafe")
        self.test = HttpTest(test) if test else None
        self.revoke_previous = bool(revoke_previous)
        self.revoke = HttpRevoke(revoke) if revoke else None
        if self.revoke and not self.revoke_previous:
            raise ValidationError("revoke (the revoke endpoint) needs revoke_previous: true")
        if self.test is not None:
            if self.test.old_must_fail and not self.revoke_previous:
                raise ValidationError("test.old_must_fail needs revoke_previous: true: until it is revoked, the "
                                      "previous value is kept on purpose and still works")
            if self.test.old_must_fail is None:
                self.test.old_must_fail = self.revoke_previous
        if timeout is None:
            raise ValidationError("timeout: expected a number of seconds, got None")
        self.timeout = check_timeout(timeout, "timeout")
        self.check_mode = check_mode
        self.fingerprint = store.fingerprint
        self._values = [value] if value else []
        # the state of a run: its result, its deadline, and what rotate() leaves for the revocation
        self.result = None
        self._deadline = None
        self._plan = None

    def secret_values(self):
        """The values of this secret this run has seen (current, previous, pending, new), for the boundary
        to mask in the module output: none shorter than :data:`MASK_MIN_LENGTH`, no other entry of the store."""
        return maskable(self._values)

    def _seen(self, *values):
        self._values.extend(v for v in values if v)

    def _diff(self, before, after):
        def show(value):
            return NEW_VALUE if value is NEW_VALUE else (self.fingerprint(value) or ABSENT)

        def render(pair):
            text = "%s: %s\n%s: %s\n" % (self.store.key, show(pair[0]), self.store.previous_key, show(pair[1]))
            if len(pair) > 2 and pair[2] is not None:
                text += "%s: %s\n" % (self.store.pending_key, show(pair[2]))
            return text

        where = self.store.describe()
        header = "%s (fingerprints, key %s)" % (where, self.fingerprint.key_id)
        return {"before": render(before), "after": render(after), "before_header": header, "after_header": header}

    def _fail(self, result, message):
        result.msg = message
        clean = redact(result.as_dict(), self.secret_values())
        raise RotationFailed(redact(message, self.secret_values()), clean)

    def _begin(self):
        store = self.store
        self._deadline = Deadline(self.timeout)
        self._plan = None
        self.result = RotationResult(
            store={"type": store.type, "location": store.describe(), "key": store.key,
                   "previous_key": store.previous_key, "pending_key": store.pending_key},
            fingerprint_key_id=self.fingerprint.key_id)

    def step(self, name, status, message):
        self.result.steps.append({"step": name, "status": status, "message": redact(message, self.secret_values())})

    def _guarded(self, work, *args):
        """Run ``work``; any error but :class:`RotationFailed` becomes one that says where it stopped."""
        store, result = self.store, self.result
        try:
            return work(*args)
        except RotationFailed:
            raise
        except TradeopsError as err:
            if isinstance(err, ValidationError) and not result.changed:
                raise  # bad input or a store that does not fit it: nothing was written
            # an error before or outside a step that rolls back: say where it stopped
            self.step("error", "failed", str(err))
            stage = result.stage
            if result.changed and stage != "finished":
                self._fail(result, "%s. The store may be half way: check %s" % (err, store.describe()))
            if stage == "finished":
                self._fail(result, "%s. The rotation itself finished: %s holds the new value (fingerprint %s) "
                           "and the previous one; re-run with revoke_previous to revoke it"
                           % (err, store.describe(), result.fingerprint))
            self._fail(result, "%s. Nothing was changed" % err)

    def run(self):
        """The whole rotation: :meth:`rotate`, the grace (if any), then :meth:`revoke_previous_value`."""
        self.rotate()
        if self.needs_grace():
            self.note_grace()
            self._sleep(self.revoke_grace)
        return self.revoke_previous_value()

    def rotate(self):
        """create -> set -> test -> finish (or, with revoke_only, nothing yet). Returns the result so far.

        The revocation, if asked for, is left to :meth:`revoke_previous_value`, so that many secrets can
        share one grace period (:class:`BatchRotation`). Raises :class:`RotationFailed` (rolled back)."""
        self._begin()
        self._guarded(self._run, self.store, self._deadline, self.result, self.step)
        return self.result.as_dict()

    def needs_grace(self):
        """Whether a grace must be waited before :meth:`revoke_previous_value` (a previous value to revoke)."""
        return bool(self._plan and self._plan.grace and self.revoke_grace > 0 and not self.check_mode)

    def note_grace(self, seconds=None):
        self.step("grace", "ok", "waited %.1fs for clients to switch to the %s value before revoking"
                  % (self.revoke_grace if seconds is None else seconds, self._plan.which))

    def revoke_previous_value(self):
        """After :meth:`rotate` (and the grace): revoke the previous value and re-test, if asked for."""
        plan, self._plan = self._plan, None
        if plan is None:
            return self.result.as_dict() if self.result is not None else None
        # the store operations of this step get a deadline of their own, whatever the grace took
        deadline = Deadline(self.timeout) if plan.grace else self._deadline
        self._guarded(self._revoke, self.store, deadline, self.result, self.step, plan.snap, plan.current)
        if plan.diff_before is not None:
            self.result.diff = self._diff(plan.diff_before, (plan.current, None))
        if plan.unchanged_diff is not None and not self.result.changed:
            self.result.diff = self._diff(plan.unchanged_diff, plan.unchanged_diff)
        return self.result.as_dict()

    def _run(self, store, deadline, result, step):
        snap = store.read(deadline)
        old, prev = snap.current, snap.previous
        self._seen(old, prev, snap.pending)
        result.fingerprint = self.fingerprint(old)
        result.previous_fingerprint = self.fingerprint(prev)

        if self.revoke_only:
            # the second pass of a routine rotation: the new value is current, the old one previous
            step("create", "skipped", "revoke_only: no new value")
            result.stage = "unchanged"
            # after a grace the store is read again; with nothing to revoke there is no grace
            self._plan = RevokePlan(snap=None if prev is not None else snap, current=old, grace=prev is not None,
                                    which="current", unchanged_diff=(old, prev))
            return result

        if self.value is not None and old is not None and self.value == old:
            step("create", "skipped", "%s already holds this value (fingerprint %s)"
                 % (store.describe(), self.fingerprint(old)))
            if not (self.revoke_previous and prev is not None):
                result.stage = "unchanged"
                result.diff = self._diff((old, prev), (old, prev))
                return result
            self._plan = RevokePlan(snap=snap, current=old, grace=False, which="current")
            return result

        # 1. create the pending value
        pending = self.value
        if pending is None and not self.check_mode:
            pending = generate_value(self.generate_spec.get("length") or 32,
                                     self.generate_spec.get("alphabet") or "urlsafe")
        self._seen(pending)
        keep = old if old is not None else prev
        result.pending_fingerprint = self.fingerprint(pending)
        if self.check_mode:
            result.changed = True
            result.stage = "would_rotate"
            after = (NEW_VALUE if pending is None else pending, None if self.revoke_previous else keep)
            result.diff = self._diff((old, prev, snap.pending), after)
            step("create", "skipped", "check mode: a new value would be %s" % (
                "generated" if self.value is None else "set"))
            return result
        step("create", "ok", "pending value created (fingerprint %s)" % self.fingerprint(pending))

        # 2. set it: staged in the pending slot, which the servers accept and no client sends yet
        #    (or, with staging=direct, straight in as current with the old one kept as previous)
        if self.staging == "pending":
            if snap.pending is not None:
                step("set", "ok", "%s: replacing a stale %s (fingerprint %s) left by an unfinished rotation"
                     % (store.describe(), store.pending_key, self.fingerprint(snap.pending)))
            backup = store.write(snap, {"current": old, "previous": prev, "pending": pending}, deadline)
            where = "%s holds the pending value; %s (fingerprint %s) is untouched and still what clients send" % (
                store.pending_key, store.key, self.fingerprint(old) or ABSENT)
        else:
            backup = store.write(snap, {"current": pending, "previous": keep, "pending": None}, deadline)
            where = "%s set to the pending value, %s keeps the previous one (fingerprint %s)" % (
                store.key, store.previous_key, self.fingerprint(keep) or ABSENT)
        result.changed = True
        result.stage = "set"
        if backup:
            result.backup_files.append(backup)
        step("set", "ok", "%s: %s" % (store.describe(), where))

        # 3. test it
        if self.test is not None:
            ok, detail, tries = self.test.wait_for(pending, accepted=True)
            if not ok:
                step("test", "failed", "the new value was refused: %s (%d tries in %.0fs)"
                     % (detail, tries, self.test.timeout))
                self._rollback(store, snap, result, step, deadline)
                still = ""
                if old is not None:
                    ok_old, detail_old, dummy = self.test.wait_for(old, accepted=True)
                    still = (" The consumer accepts the previous value again (%s)." % detail_old if ok_old else
                             " Warning: the consumer does not accept the previous value either (%s): check it."
                             % detail_old)
                hint = ("Make the servers that verify it accept %s from %s (or notify them through a handler), "
                        "or use staging=direct for a verifier that only reads %s, and re-run."
                        % (store.pending_key, store.describe(), store.key) if self.staging == "pending" else
                        "Make the consumer read %s (or notify it through a handler) and re-run." % store.describe())
                self._fail(result, "the test %s refused the new value (fingerprint %s): %s. Rolled back: %s is "
                           "exactly as before (fingerprint %s).%s %s"
                           % (self.test.describe(), self.fingerprint(pending), detail, store.describe(),
                              self.fingerprint(old) or ABSENT, still, hint))
            step("test", "ok", "the new value is accepted: %s" % detail)
        else:
            step("test", "skipped", "no test given: the new value is not proven")

        if self.staging == "pending":
            self._promote(store, snap, old, keep, pending, result, step, deadline)

        # 4. finish: the pending value is the current one, the previous kept for rollback
        result.fingerprint = self.fingerprint(pending)
        result.previous_fingerprint = self.fingerprint(keep)
        result.stage = "finished"
        step("finish", "ok", "promoted: current %s, previous %s kept for rollback"
             % (self.fingerprint(pending), self.fingerprint(keep) or ABSENT))
        result.diff = self._diff((old, prev, snap.pending), (pending, keep))

        if self.revoke_previous:
            # clients re-read the store on their own schedule: let them switch before the old one goes
            self._plan = RevokePlan(snap=None, current=pending, grace=keep is not None, which="new",
                                    diff_before=(old, prev, snap.pending))
        return result

    def _promote(self, store, snap, old, keep, pending, result, step, deadline):
        """Finish for staging=pending: the pending value becomes current, the current one previous."""
        try:
            now = store.read(deadline)
            self._seen(now.current, now.previous, now.pending)
            if (now.current, now.pending) != (old, pending):
                raise BackendError("%s changed during the rotation (%s is now %s, %s %s)" % (
                    store.describe(), store.key, self.fingerprint(now.current) or ABSENT, store.pending_key,
                    self.fingerprint(now.pending) or ABSENT))
            backup = store.write(now, {"current": pending, "previous": keep, "pending": None}, deadline)
        except TradeopsError as err:
            step("finish", "failed", str(err))
            self._rollback(store, snap, result, step, Deadline(max(self.timeout, 5.0)))
            self._fail(result, "the new value (fingerprint %s) passed its test but could not be promoted: %s. "
                       "Rolled back: %s is exactly as before (fingerprint %s), which clients still send and the "
                       "servers still accept. Fix the store and re-run."
                       % (self.fingerprint(pending), err, store.describe(), self.fingerprint(old) or ABSENT))
        if backup:
            result.backup_files.append(backup)

    def _rollback(self, store, snap, result, step, deadline):
        try:
            # the rollback gets a deadline of its own: running out of time must not prevent it
            store.restore(snap, Deadline(max(self.timeout, 5.0)))
            back = store.read(Deadline(max(self.timeout, 5.0)))
        except TradeopsError as err:
            step("rollback", "failed", str(err))
            if self.staging == "pending" and result.stage == "set":
                where = ("the new value (fingerprint %s) under %s next to the current one (fingerprint %s) under "
                         "%s, which clients still send and the servers still accept; remove %s or restore"
                         % (result.pending_fingerprint, store.pending_key, result.fingerprint or ABSENT,
                            store.key, store.pending_key))
            else:
                where = ("the new value (fingerprint %s) under %s and the previous one (fingerprint %s) under %s, "
                         "both accepted; restore" % (result.pending_fingerprint, store.key,
                                                     result.fingerprint or ABSENT, store.previous_key))
            self._fail(result, "the rotation failed and so did the rollback: %s. %s may hold %s it from the backup "
                       "%s" % (err, store.describe(), where, ", ".join(result.backup_files) or "(none)"))
        if back.values != snap.values:
            step("rollback", "failed", "read back after the restore does not match")
            self._fail(result, "%s did not read back as before after the rollback: check it; the backup is %s"
                       % (store.describe(), ", ".join(result.backup_files) or "(none)"))
        result.rolled_back = True
        result.changed = True
        result.stage = "rolled_back"
        result.fingerprint = self.fingerprint(snap.current)
        result.previous_fingerprint = self.fingerprint(snap.previous)
        step("rollback", "ok", "%s restored exactly as before (fingerprint %s)"
             % (store.describe(), self.fingerprint(snap.current) or ABSENT))

    def _revoke(self, store, deadline, result, step, snap, current):
        if snap is None:
            snap = store.read(deadline)
        self._seen(snap.current, snap.previous)
        if snap.current != current:
            self._fail(result, "%s changed during the rotation (it now holds fingerprint %s): not revoking; "
                       "re-run" % (store.describe(), self.fingerprint(snap.current) or ABSENT))
        old = snap.previous
        if old is None:
            step("revoke", "skipped", "%s holds no previous value" % store.describe())
            result.stage = "revoked" if result.stage in ("finished", "unchanged", None) else result.stage
            result.previous_fingerprint = None
            return
        if self.check_mode:
            result.changed = True
            result.stage = "would_revoke"
            result.diff = self._diff((snap.current, old), (snap.current, None))
            step("revoke", "skipped", "check mode: %s (fingerprint %s) would be removed" % (store.previous_key,
                                                                                            self.fingerprint(old)))
            return
        backup = store.write(snap, {"previous": None}, deadline)
        result.changed = True
        if backup:
            result.backup_files.append(backup)
        message = "%s removed from %s" % (store.previous_key, store.describe())
        if self.revoke is not None:
            try:
                message += "; " + self.revoke.call(old, current, deadline)
            except BackendError as err:
                step("revoke", "failed", "%s; %s" % (message, err))
                self._fail(result, "%s. The new value (fingerprint %s) is current and the previous one (fingerprint "
                           "%s) is no longer in the store; call the revoke endpoint again (re-run with "
                           "revoke_previous)" % (err, self.fingerprint(current), self.fingerprint(old)))
        step("revoke", "ok", message)
        result.revoked_fingerprint = self.fingerprint(old)
        result.previous_fingerprint = None
        result.stage = "revoked"
        result.diff = self._diff((current, old), (current, None))

        if self.test is None:
            return
        ok, detail, dummy = self.test.wait_for(current, accepted=True)
        if not ok:
            step("retest", "failed", "after the revocation the new value is refused: %s" % detail)
            if self.revoke is None:
                self._rollback(store, snap, result, step, deadline)
                self._fail(result, "after the revocation the test %s refused the current value (fingerprint %s): "
                           "%s. Rolled back: %s holds the previous value (fingerprint %s) again next to the current "
                           "one. Check the consumer, then re-run with revoke_previous."
                           % (self.test.describe(), self.fingerprint(current), detail, store.describe(),
                              self.fingerprint(old)))
            self._fail(result, "after the revocation the test %s refused the current value (fingerprint %s): %s. "
                       "The previous value was revoked at the endpoint, so it is not put back; check the consumer "
                       "(backups: %s)" % (self.test.describe(), self.fingerprint(current), detail,
                                          ", ".join(result.backup_files) or "none"))
        if self.test.old_must_fail:
            refused, detail_old, dummy = self.test.wait_for(old, accepted=False)
            if not refused:
                step("retest", "failed", "the revoked value is still accepted: %s" % detail_old)
                self._fail(result, "the revoked value (fingerprint %s) is still accepted by %s: the consumer has not "
                           "dropped it (does it re-read %s, or does it need a reload handler?). The new value "
                           "(fingerprint %s) is current and works; reload the consumer and re-run with "
                           "revoke_previous" % (self.fingerprint(old), self.test.describe(), store.describe(),
                                                self.fingerprint(current)))
            step("retest", "ok", "the current value is accepted and the revoked one refused: %s" % detail_old)
        else:
            step("retest", "ok", "the current value is accepted: %s" % detail)


# --------------------------------------------------------------------------------------------
# many secrets in one call


class BatchRotation:
    """Rotate many secrets concurrently, each through its own :class:`RotationService`.

    ``services`` is a list of ``(name, RotationService)``. Every secret is rotated (create, set, test,
    finish; rolled back on a failed test) by a bounded thread pool; then, if any secret has a previous
    value to revoke after a grace, the grace is waited ONCE for them all, counted from the last
    promotion; then every revocation runs, concurrently again. A failed secret does not stop the others.
    Secrets of one store object are safe together: every store write is locked and merged per key.
    """

    def __init__(self, services, concurrency=8, revoke_grace=0.0, check_mode=False, sleep=time.sleep):
        if not services:
            raise ValidationError("secrets is empty: give at least one secret")
        self.concurrency = number(concurrency, "concurrency", integer=True, minimum=1)
        if self.concurrency is None:
            raise ValidationError("concurrency must be at least 1, got %r" % (concurrency,))
        self.services = list(services)
        names = [name for name, dummy in self.services]
        for name in names:
            if not name or not isinstance(name, str):
                raise ValidationError("every secret needs a name (a label for results and messages)")
        dupes = sorted(set(n for n in names if names.count(n) > 1))
        if dupes:
            raise ValidationError("secret names must be unique; repeated: %s" % ", ".join(dupes))
        self._check_no_shared_keys()
        self.revoke_grace = check_timeout(revoke_grace or 0.0, "revoke_grace", minimum=0.0)
        self.check_mode = check_mode
        self._sleep = sleep
        self._failures = {}  # name -> (message, result or None), for the run under way

    def _check_no_shared_keys(self):
        """Two secrets may share a file, Secret or Vault path, but never a key: they would undo each other."""
        owner = {}
        for name, service in self.services:
            store = service.store
            for key in store.keys.values():
                where = (store.type, store.describe(), key)
                if where in owner:
                    raise ValidationError("secrets %s and %s both use %s of %s: give each secret its own key, "
                                          "previous_key and pending_key" % (owner[where], name, key, store.describe()))
                owner[where] = name

    def secret_values(self):
        values = []
        for dummy, service in self.services:
            values.extend(service.secret_values())
        return maskable(values)

    def _each(self, work, services):
        """``work(name, service)`` for every service, at most ``concurrency`` at once; errors are collected."""
        if not services:
            return
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(services))) as pool:
            futures = [(name, service, pool.submit(work, name, service)) for name, service in services]
            for name, service, future in futures:
                try:
                    future.result()
                except RotationFailed as err:
                    self._failures[name] = (str(err), err.result)
                except TradeopsError as err:
                    # raised before anything was written (bad input, a store that does not fit it)
                    self._failures[name] = (redact("%s. Nothing was changed" % err, service.secret_values()), None)
                except Exception as err:  # noqa: BLE001 - one secret's bug must not hide the others' results
                    self._failures[name] = (redact("unexpected %s: %s; check %s" % (
                        type(err).__name__, err, service.store.describe()), service.secret_values()), None)

    def run(self):
        """Returns ``(results, diffs, failed)``: one secret-free result per secret, in the order given."""
        self._failures = {}
        self._each(lambda name, service: service.rotate(), self.services)
        waiting = [(n, s) for n, s in self.services if n not in self._failures and s.needs_grace()]
        if waiting:
            # one grace for every secret, counted from the last promotion
            for dummy, service in waiting:
                service.note_grace(self.revoke_grace)
            self._sleep(self.revoke_grace)
        self._each(lambda name, service: service.revoke_previous_value(),
                   [(n, s) for n, s in self.services if n not in self._failures])
        results, diffs = [], []
        for name, service in self.services:
            failure = self._failures.get(name)
            base = failure[1] if failure and failure[1] is not None else (
                service.result.as_dict() if service.result is not None else None)
            entry = dict(base or {"changed": False, "fingerprint": None, "previous_fingerprint": None,
                                  "rolled_back": False, "steps": [], "backup_files": []})
            diff = entry.pop("diff", None)
            entry.pop("msg", None)
            entry = dict([("name", name)] + list(entry.items()))
            entry["failed"] = failure is not None
            entry["msg"] = failure[0] if failure else self._summary(entry)
            results.append(redact(entry, service.secret_values()))
            if diff and failure is None:
                diff = dict(diff)
                for side in ("before_header", "after_header"):
                    diff[side] = "%s: %s" % (name, diff[side])
                diffs.append(diff)
        failed = [r for r in results if r["failed"]]
        return results, diffs, failed

    @staticmethod
    def _summary(entry):
        stage = entry.get("stage")
        text = {"finished": "rotated", "revoked": "rotated and the previous value revoked",
                "unchanged": "unchanged", "would_rotate": "would be rotated (check mode)",
                "would_revoke": "the previous value would be revoked (check mode)"}.get(stage, stage or "done")
        return "%s: fingerprint %s" % (text, entry.get("fingerprint") or ABSENT)
