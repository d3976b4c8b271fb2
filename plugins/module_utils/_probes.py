# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health probes and the GO / NO-GO service behind ``tradeops.remediation.health_check``.

Plain Python with no Ansible globals: ``ProbeService(probes, ...).run()`` returns a result dict;
the module is a thin adapter around it. Every probe of a round runs concurrently through
:func:`_deadline.fan_out`, each with its own timeout, so a hung peer costs its own timeout and
delays no other probe. With ``wait_for`` the rounds repeat until the overall status is GO (and,
with ``stable_for``, has stayed GO for that long) or the deadline ends; the service returns as
soon as the condition holds.

A probe's ``check(deadline)`` returns ``(ok, value, message)`` or raises a
:class:`TradeopsError` whose message becomes the probe's NO-GO message. Messages and values are
scrubbed of every secret option given to any probe before they leave this file.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import os
import re
import socket
import time

from ansible.module_utils.common.text.formatters import human_to_bytes

from ansible_collections.tradeops.remediation.plugins.module_utils import _docker, _http, _kubernetes, _postgres, _redis
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import MAX_TIMEOUT, Deadline, fan_out
from ansible_collections.tradeops.remediation.plugins.module_utils._redact import redact
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    BackendError,
    TradeopsError,
    ValidationError,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import missing as _missing
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import compose, number

GO = "GO"
NOGO = "NO-GO"
WARN = "WARN"
CRITICAL = "critical"
WARNING = "warning"
SEVERITIES = (CRITICAL, WARNING)
PROBE_TYPES = ("http", "tcp", "postgres", "redis", "docker", "kubernetes", "disk", "memory", "load", "metric")
COMMON_OPTIONS = ("name", "type", "timeout", "severity", "component")
DEFAULT_TIMEOUT = 5.0
SAFE_HTTP_METHODS = ("GET", "HEAD", "OPTIONS")
# A probe that answers later than its timeout plus this is NO-GO even if the answer was good:
# the timeout is the contract, whatever a library did with it.
OVERRUN_GRACE = 0.25
ABANDON_GRACE = 0.5
MEMINFO = "/proc/meminfo"


def _elapsed_ms(start):
    return int((time.monotonic() - start) * 1000)


# --------------------------------------------------------------------------------------------
# Option helpers: every message names the probe and the option
# --------------------------------------------------------------------------------------------
def _number(spec, option, where, default=None, **bounds):
    """``spec[option]`` as a bounded number (see :func:`_validate.number`), named "<where>: <option>"."""
    return number(spec.get(option), ("%s: %s" % (where, option)) if where else option, default=default, **bounds)


def _port(spec, option, where, default=None):
    return _number(spec, option, where, integer=True, minimum=1, maximum=65535, default=default)


def _http_url(spec, option, where):
    return _http.check_url(spec.get(option), "%s: %s" % (where, option))


def _json_number(value):
    """Prometheus values can be +Inf, -Inf or NaN, which JSON cannot carry: return those as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    return value


# --------------------------------------------------------------------------------------------
# Prometheus text exposition format
# --------------------------------------------------------------------------------------------
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class PrometheusParseError(ValueError):
    pass


def _skip_spaces(line, i):
    while i < len(line) and line[i] in " \t":
        i += 1
    return i


def _quoted(line, i):
    """Parse a double-quoted string starting at line[i] == '"'. Returns (text, index after it)."""
    out = []
    i += 1
    while i < len(line):
        ch = line[i]
        if ch == "\\":
            if i + 1 >= len(line):
                break
            nxt = line[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
        elif ch == '"':
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise PrometheusParseError("unterminated quoted string")


def parse_sample(line):
    """Parse one sample line: ``name{label="value",...} value [timestamp]``.

    Returns ``(name, labels, value)``. Label values may hold escaped quotes, backslashes and
    new lines; values may be +Inf, -Inf or NaN; a timestamp and an OpenMetrics exemplar
    (``# {...} 1.0``) after the value are accepted and ignored. Quoted (UTF-8) metric and label
    names inside the braces, as Prometheus 3 writes them, are understood too.
    """
    name = None
    labels = {}
    m = _METRIC_NAME.match(line)
    i = 0
    if m:
        name = m.group(0)
        i = m.end()
    j = _skip_spaces(line, i)
    braces = j < len(line) and line[j] == "{"
    if braces:
        i = j + 1
        while True:
            i = _skip_spaces(line, i)
            if i >= len(line):
                raise PrometheusParseError("unterminated label set")
            if line[i] == "}":
                i += 1
                break
            if line[i] == '"':
                text, i = _quoted(line, i)
                i = _skip_spaces(line, i)
                if i < len(line) and line[i] in ",}":
                    if name is not None:
                        raise PrometheusParseError("two metric names")
                    name = text
                    if line[i] == ",":
                        i += 1
                    continue
                label = text
            else:
                lm = _LABEL_NAME.match(line, i)
                if not lm:
                    raise PrometheusParseError("bad label name at column %d" % (i + 1))
                label = lm.group(0)
                i = _skip_spaces(line, lm.end())
            if i >= len(line) or line[i] != "=":
                raise PrometheusParseError("expected '=' after label %s" % label)
            i = _skip_spaces(line, i + 1)
            if i >= len(line) or line[i] != '"':
                raise PrometheusParseError("expected a quoted value for label %s" % label)
            value, i = _quoted(line, i)
            if label in labels:
                raise PrometheusParseError("label %s given twice" % label)
            labels[label] = value
            i = _skip_spaces(line, i)
            if i < len(line) and line[i] == ",":
                i += 1
            elif i < len(line) and line[i] == "}":
                i += 1
                break
            else:
                raise PrometheusParseError("expected ',' or '}' after label %s" % label)
    if name is None:
        raise PrometheusParseError("no metric name")
    rest = line[i:]
    if not braces and rest and rest[0] not in " \t":
        raise PrometheusParseError("expected a space before the value")
    fields = rest.split("#", 1)[0].split()
    if not fields or len(fields) > 2:
        raise PrometheusParseError("expected a value and an optional timestamp")
    try:
        value = float(fields[0])
        if len(fields) == 2:
            float(fields[1])
    except ValueError:
        raise PrometheusParseError("bad number %r" % " ".join(fields))
    return name, labels, value


def parse_prometheus(text):
    """Yield ``(name, labels, value)`` for every sample of a Prometheus text exposition.

    Comments (``# HELP``, ``# TYPE``, ``# EOF``, anything after ``#``) and blank lines are
    skipped. Raises :class:`PrometheusParseError` naming the line for a malformed sample.
    """
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            yield parse_sample(line)
        except PrometheusParseError as err:
            raise PrometheusParseError("line %d: %s: %r" % (lineno, err, raw[:120]))


def _label_value_matches(actual, expected):
    expected = str(expected).lower() if isinstance(expected, bool) else str(expected)
    if actual == expected:
        return True
    try:  # le="1" matches 1.0, le="+Inf" matches inf
        a, e = float(actual), float(expected)
    except ValueError:
        return False
    return a == e


def _format_series(name, labels):
    if not labels:
        return name
    return "%s{%s}" % (name, ",".join('%s="%s"' % (k, v) for k, v in sorted(labels.items())))


# --------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------
class Probe:
    """One probe. Subclasses set ``type``, ``options``, ``required`` and implement check()."""

    type = None
    required = ()
    # The argument spec of this type's options (its own and its backend's fragment), no defaults:
    # health_check composes the probes' suboptions from every type's (probe_argspec()).
    argspec = {}

    def __init__(self, index, spec):
        self.index = index
        self.spec = spec
        self.name = spec["name"]
        self.where = "probes[%d] (%s)" % (index, self.name)
        allowed = set(COMMON_OPTIONS) | set(self.argspec)
        for option in sorted(spec):
            if option not in allowed and spec[option] is not None:
                users = [t for t in PROBE_TYPES if option in PROBES[t].argspec]
                raise ValidationError("%s: %s does not apply to the %s probe%s" % (
                    self.where, option, self.type,
                    " (it is an option of the %s probe)" % " and ".join(users) if users else ""))
        for option in self.required:
            if _missing(spec.get(option)):
                raise ValidationError("%s: %s is required for the %s probe" % (self.where, option, self.type))
        self.timeout = _number(spec, "timeout", self.where, above=0, maximum=MAX_TIMEOUT, default=DEFAULT_TIMEOUT)
        self.severity = spec.get("severity") or CRITICAL
        if self.severity not in SEVERITIES:
            raise ValidationError("%s: severity must be critical or warning, got %r" % (self.where, self.severity))
        component = spec.get("component")
        self.component = None if _missing(component) else str(component)
        self.secrets = [str(spec[o]) for o, option in self.argspec.items()
                        if option.get("no_log") and not _missing(spec.get(o))]

    def check(self, deadline):
        """Return (ok, value, message); raise TradeopsError for a NO-GO with a message only."""
        raise NotImplementedError


class HttpProbe(Probe):
    """An HTTP request: status code, optional JSON field value, optional latency bound."""

    type = "http"
    required = ("url",)
    argspec = _http.argspec("transport", "auth", url=dict(type="str"), method=dict(type="str"),
                            status=dict(type="list", elements="int"), field=dict(type="str"),
                            value=dict(type="raw"), max_latency_ms=dict(type="float"),
                            capture=dict(type="list", elements="str"))

    def __init__(self, index, spec):
        super(HttpProbe, self).__init__(index, spec)
        where = self.where
        self.url = _http_url(spec, "url", where)
        self.method = (spec.get("method") or "GET").upper()
        if self.method not in SAFE_HTTP_METHODS:
            raise ValidationError("%s: method must be one of %s (a probe never changes anything), got %r"
                                  % (where, ", ".join(SAFE_HTTP_METHODS), spec.get("method")))
        self.client = _http.client(_http.http_options(spec, where + ": "))
        status = spec.get("status")
        if status is None:
            status = [200]
        elif not isinstance(status, (list, tuple)):
            status = [status]
        if not status:
            raise ValidationError("%s: status must list at least one HTTP status code" % where)
        self.status = [_number({"status": s}, "status", where, integer=True, minimum=100, maximum=599)
                       for s in status]
        self.field = spec.get("field")
        self.value = spec.get("value")
        if not _missing(self.field) and self.value is None:
            raise ValidationError("%s: value is required with field %r (the value that means healthy)"
                                  % (where, self.field))
        if self.value is not None and _missing(self.field):
            raise ValidationError("%s: field is required with value (the dotted path of the JSON field)" % where)
        if not _missing(self.field) and self.method == "HEAD":
            raise ValidationError("%s: field needs a response body; use method GET, not HEAD" % where)
        self.max_latency_ms = _number(spec, "max_latency_ms", where, above=0)
        capture = spec.get("capture") or []
        if not isinstance(capture, (list, tuple)) or any(_missing(f) or not isinstance(f, str) for f in capture):
            raise ValidationError("%s: capture must be a list of dotted JSON field paths" % where)
        if capture and self.method == "HEAD":
            raise ValidationError("%s: capture needs a response body; use method GET, not HEAD" % where)
        self.capture = list(capture)
        self.captured = None

    def _capture(self, resp):
        """The O(capture) fields of the answer (missing ones as None), or None when nothing is captured."""
        if not self.capture:
            return None
        try:
            body = resp.json()
        except BackendError:
            return dict((f, None) for f in self.capture)
        captured = {}
        for path in self.capture:
            try:
                captured[path] = _http.json_field(body, path)
            except (KeyError, BackendError):
                captured[path] = None
        return captured

    def check(self, deadline):
        self.captured = None
        resp = self.client.request(self.url, self.method, deadline=deadline)
        if resp.status in self.status:
            self.captured = self._capture(resp)
        what = "%s %s answered HTTP %d in %d ms" % (self.method, self.url, resp.status, resp.latency_ms)
        if resp.status not in self.status:
            return False, resp.status, "%s, expected %s: %s" % (
                what, " or ".join(str(s) for s in self.status), " ".join(resp.text(120).split()))
        if self.max_latency_ms is not None and resp.latency_ms > self.max_latency_ms:
            return False, resp.status, "%s, above max_latency_ms %s" % (what, _fmt(self.max_latency_ms))
        if _missing(self.field):
            return True, resp.status, what
        try:
            actual = _http.json_field(resp.json(), self.field)
        except KeyError:
            return False, None, "%s but field %r is not in the response" % (what, self.field)
        except BackendError as err:
            return False, None, "%s but %s" % (what, err)
        if not _http.values_match(actual, self.value):
            return False, actual, "%s with %s=%r, expected %r" % (what, self.field, actual, self.value)
        return True, actual, "%s with %s=%r" % (what, self.field, actual)


class TcpProbe(Probe):
    """A TCP connect to host:port."""

    type = "tcp"
    required = ("host", "port")
    argspec = dict(host=dict(type="str"), port=dict(type="int"))

    def __init__(self, index, spec):
        super(TcpProbe, self).__init__(index, spec)
        self.host = str(spec["host"])
        self.port = _port(spec, "port", self.where)

    def check(self, deadline):
        timeout = deadline.call_timeout()
        started = time.monotonic()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except (socket.timeout, TimeoutError):
            raise BackendError("tcp %s:%d: no connection within %.1fs" % (self.host, self.port, timeout))
        except OSError as err:
            raise BackendError("tcp %s:%d: %s" % (self.host, self.port, err))
        sock.close()
        return True, "open", "tcp %s:%d accepted a connection in %d ms" % (
            self.host, self.port, _elapsed_ms(started))


# A write that needs no table: a writable primary assigns a transaction id and commits it to its WAL; a standby,
# a server in recovery or one whose disk is full refuses.
POSTGRES_WRITE = "SELECT pg_is_in_recovery(), txid_current()"


class PostgresProbe(Probe):
    """Connect to PostgreSQL and run SELECT 1; with ``write``, prove it takes a write (a committed transaction id)."""

    type = "postgres"
    argspec = compose(_postgres.probe_connection_spec(), dict(write=dict(type="bool")))

    def __init__(self, index, spec):
        super(PostgresProbe, self).__init__(index, spec)
        _postgres.connection_kwargs(spec, where=self.where)  # validates port, sslmode, timeout
        self.write = bool(spec.get("write"))

    def check(self, deadline):
        conn = _postgres.connect(self.spec, deadline)
        where = _postgres.describe(self.spec)
        try:
            import psycopg2
            statement = POSTGRES_WRITE if self.write else "SELECT 1"
            try:
                with conn.cursor() as cur:
                    cur.execute(statement)
                    row = cur.fetchone()
                conn.commit()
            except psycopg2.Error as err:
                raise BackendError("postgres %s: %s failed: %s" % (where, statement, " ".join(str(err).split())))
            number = conn.server_version
        finally:
            conn.close()
        version = "%d.%d" % (number // 10000, number % 10000) if number >= 100000 else str(number)
        if self.write:
            if not row or row[0]:
                return False, version, "postgres %s: in recovery (a standby or still recovering): it takes no " \
                                       "write" % where
            return True, version, "postgres %s: a write committed (transaction %s, server %s)" % (
                where, row[1], version)
        if not row or row[0] != 1:
            return False, version, "postgres %s: SELECT 1 returned %r" % (where, row)
        return True, version, "postgres %s: SELECT 1 ok (server %s)" % (where, version)


class RedisProbe(Probe):
    """Redis PING; with ``write``, also a SET (with a 30 s expiry) and DEL of a probe key of its own: a server
    out of memory (maxmemory with noeviction) answers PING and refuses the SET."""

    type = "redis"
    argspec = _redis.argspec(write=dict(type="bool"))

    def __init__(self, index, spec):
        super(RedisProbe, self).__init__(index, spec)
        self.redis = _redis.redis_options(spec, self.where + ": ", range_messages=False)
        self.host, self.port = self.redis.host, self.redis.port
        self.write = bool(spec.get("write"))

    def check(self, deadline):
        def probe(client):
            pong = client.ping()
            return pong, (_redis.write_check(client) if pong is True and self.write else (True, None))

        pong, (wrote, error) = _redis.call(self.redis, deadline, probe, "the redis probe")
        if pong is not True:
            return False, str(pong), "redis %s:%d answered PING with %r" % (self.host, self.port, pong)
        if not wrote:
            return False, "PONG", "redis %s:%d answered PING but did not take a write: %s" % (self.host, self.port, error)
        return True, "PONG", "redis %s:%d answered PING%s" % (
            self.host, self.port, " and took a write" if self.write else "")


class DockerProbe(Probe):
    """A container is running and, when it has a healthcheck, healthy."""

    type = "docker"
    required = ("container",)
    argspec = _docker.argspec()

    def __init__(self, index, spec):
        super(DockerProbe, self).__init__(index, spec)
        self.docker = _docker.docker_options(spec, self.where + ": ")
        self.container = self.docker.container

    def _inspect(self, deadline):
        return _docker.call(self.docker, deadline, lambda client: client.api.inspect_container(self.container),
                            "the docker probe")

    def check(self, deadline):
        state = self._inspect(deadline).get("State") or {}
        status = state.get("Status") or ("running" if state.get("Running") else "unknown")
        health = (state.get("Health") or {}).get("Status")
        value = {"status": status, "health": health}
        if status != "running":
            detail = ""
            if state.get("ExitCode") is not None and status in ("exited", "dead"):
                detail = " (exit code %s)" % state.get("ExitCode")
            return False, value, "container %s is %s%s" % (self.container, status, detail)
        if health is None:
            return True, value, "container %s is running (no healthcheck)" % self.container
        if health != "healthy":
            log = (state.get("Health") or {}).get("Log") or []
            last = " ".join(str((log[-1] or {}).get("Output") or "").split())[:120] if log else ""
            return False, value, "container %s is running but %s%s" % (
                self.container, health, (": last check said %r" % last) if last else "")
        return True, value, "container %s is running and healthy" % self.container


class KubernetesProbe(Probe):
    """A deployment has at least min_ready ready replicas (default: all of spec.replicas)."""

    type = "kubernetes"
    required = ("deployment",)
    argspec = _kubernetes.argspec(deployment=dict(type="str"), min_ready=dict(type="int"))

    def __init__(self, index, spec):
        super(KubernetesProbe, self).__init__(index, spec)
        self.deployment = str(spec["deployment"])
        self.k8s = _kubernetes.kubernetes_options(spec, self.where + ": ")
        self.namespace = self.k8s.namespace
        self.min_ready = _number(spec, "min_ready", self.where, integer=True, minimum=0)

    def check(self, deadline):
        name = "deployment %s/%s" % (self.namespace, self.deployment)
        dep = _kubernetes.call(self.k8s, deadline, lambda api, timeout: api.read_namespaced_deployment(
            self.deployment, self.namespace, _request_timeout=timeout), name, purpose="the kubernetes probe")
        desired = dep.spec.replicas if dep.spec.replicas is not None else 1
        ready = (dep.status.ready_replicas or 0) if dep.status else 0
        if self.min_ready is None and desired == 0:
            return False, ready, ("%s is scaled to 0 replicas (halted?); set min_ready: 0 if that is healthy"
                                  % name)
        need = desired if self.min_ready is None else self.min_ready
        message = "%s: %d of %d replicas ready (min_ready %d)" % (name, ready, desired, need)
        return ready >= need, ready, message


class DiskProbe(Probe):
    """Free space of the filesystem holding a path, as df shows it (free % = 100 - Use%)."""

    type = "disk"
    required = ("path",)
    argspec = dict(path=dict(type="path"), min_free_bytes=dict(type="bytes"), min_free_percent=dict(type="float"))

    def __init__(self, index, spec):
        super(DiskProbe, self).__init__(index, spec)
        self.path = spec["path"]
        if not os.path.isabs(self.path):
            raise ValidationError("%s: path must be absolute, got %r" % (self.where, self.path))
        min_bytes = spec.get("min_free_bytes")
        if isinstance(min_bytes, str):
            try:
                min_bytes = human_to_bytes(min_bytes)
            except ValueError as err:
                raise ValidationError("%s: min_free_bytes: %s" % (self.where, err))
        self.min_free_bytes = _number({"min_free_bytes": min_bytes}, "min_free_bytes", self.where,
                                      integer=True, minimum=0)
        self.min_free_percent = _number(spec, "min_free_percent", self.where, minimum=0, maximum=100)
        if self.min_free_bytes is None and self.min_free_percent is None:
            raise ValidationError("%s: min_free_bytes or min_free_percent is required for the disk probe"
                                  % self.where)

    def check(self, deadline):
        try:
            st = os.statvfs(self.path)
        except OSError as err:
            raise BackendError("disk %s: %s" % (self.path, err.strerror or err))
        free = st.f_bavail * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        percent = 100.0 * free / (used + free) if used + free else 0.0
        value = {"free_bytes": free, "free_percent": round(percent, 2)}
        problems = []
        if self.min_free_bytes is not None and free < self.min_free_bytes:
            problems.append("below min_free_bytes %d" % self.min_free_bytes)
        if self.min_free_percent is not None and percent < self.min_free_percent:
            problems.append("below min_free_percent %s" % _fmt(self.min_free_percent))
        message = "disk %s: %s free (%.1f%%)" % (self.path, _bytes(free), percent)
        if problems:
            return False, value, "%s, %s" % (message, " and ".join(problems))
        return True, value, message


class MemoryProbe(Probe):
    """Used memory percent from /proc/meminfo (MemTotal - MemAvailable)."""

    type = "memory"
    required = ("max_used_percent",)
    argspec = dict(max_used_percent=dict(type="float"))
    meminfo = MEMINFO

    def __init__(self, index, spec):
        super(MemoryProbe, self).__init__(index, spec)
        self.max_used_percent = _number(spec, "max_used_percent", self.where, minimum=0, maximum=100)

    def check(self, deadline):
        info = {}
        try:
            with open(self.meminfo) as fh:
                for line in fh:
                    key, sep, rest = line.partition(":")
                    if sep and rest.split():
                        info[key.strip()] = int(rest.split()[0]) * 1024
        except (OSError, ValueError) as err:
            raise BackendError("memory: cannot read %s (the memory probe needs Linux): %s" % (self.meminfo, err))
        total = info.get("MemTotal")
        available = info.get("MemAvailable")
        if available is None and total is not None:  # kernels before 3.14
            available = info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0)
        if not total:
            raise BackendError("memory: no MemTotal in %s" % self.meminfo)
        used = round(100.0 * (total - available) / total, 2)
        message = "memory: %.1f%% used (%s of %s available)" % (used, _bytes(available), _bytes(total))
        if used > self.max_used_percent:
            return False, used, "%s, above max_used_percent %s" % (message, _fmt(self.max_used_percent))
        return True, used, message


class LoadProbe(Probe):
    """1-minute load average per CPU (os.getloadavg()[0] / os.cpu_count())."""

    type = "load"
    required = ("max_load_per_cpu",)
    argspec = dict(max_load_per_cpu=dict(type="float"))

    def __init__(self, index, spec):
        super(LoadProbe, self).__init__(index, spec)
        self.max_load_per_cpu = _number(spec, "max_load_per_cpu", self.where, minimum=0)

    def check(self, deadline):
        try:
            load1 = os.getloadavg()[0]
        except OSError as err:
            raise BackendError("load: the load average is not available here: %s" % err)
        cpus = os.cpu_count() or 1
        per_cpu = round(load1 / cpus, 3)
        message = "load: %.2f over %d CPUs = %.3f per CPU" % (load1, cpus, per_cpu)
        if per_cpu > self.max_load_per_cpu:
            return False, per_cpu, "%s, above max_load_per_cpu %s" % (message, _fmt(self.max_load_per_cpu))
        return True, per_cpu, message


class MetricProbe(Probe):
    """One Prometheus sample from a /metrics page, within [min, max]."""

    ACCEPT = {"Accept": "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"}

    type = "metric"
    required = ("url", "metric")
    argspec = _http.argspec("transport", "auth", url=dict(type="str"), metric=dict(type="str"),
                            labels=dict(type="dict"), min=dict(type="float"), max=dict(type="float"))

    def __init__(self, index, spec):
        super(MetricProbe, self).__init__(index, spec)
        where = self.where
        self.url = _http_url(spec, "url", where)
        self.metric = str(spec["metric"])
        labels = spec.get("labels") or {}
        if not isinstance(labels, dict):
            raise ValidationError("%s: labels must be a dict of label name to value" % where)
        self.labels = labels
        self.min = _number(spec, "min", where)
        self.max = _number(spec, "max", where)
        if self.min is None and self.max is None:
            raise ValidationError("%s: min or max is required for the metric probe" % where)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValidationError("%s: min (%s) is greater than max (%s)" % (where, _fmt(self.min), _fmt(self.max)))
        self.client = _http.client(_http.http_options(spec, where + ": "))

    def check(self, deadline):
        resp = self.client.request(self.url, "GET", deadline=deadline, headers=self.ACCEPT)
        if resp.status != 200:
            raise BackendError("GET %s answered HTTP %d: %s" % (self.url, resp.status,
                                                                " ".join(resp.text(120).split())))
        text = resp.body.decode("utf-8", "replace")
        truncated = len(resp.body) >= _http.MAX_BODY
        if truncated:  # keep whole lines only
            text = text[:text.rfind("\n") + 1]
        wanted = _format_series(self.metric, self.labels)
        matches, others = [], []
        try:
            for name, labels, value in parse_prometheus(text):
                if name != self.metric:
                    continue
                if all(k in labels and _label_value_matches(labels[k], v) for k, v in self.labels.items()):
                    matches.append((labels, value))
                elif len(others) < 3:
                    others.append(labels)
        except PrometheusParseError as err:
            raise BackendError("GET %s: not a Prometheus text exposition: %s" % (self.url, err))
        if not matches:
            hint = ""
            if others:
                hint = "; other series of %s: %s" % (
                    self.metric, ", ".join(_format_series(self.metric, o) for o in others))
            if truncated:
                hint += "; the page was cut at %d bytes" % _http.MAX_BODY
            return False, None, "no sample %s at %s%s" % (wanted, self.url, hint)
        if len(matches) > 1:
            return False, None, "%d samples match %s at %s; add labels to pick one: %s" % (
                len(matches), wanted, self.url, ", ".join(_format_series(self.metric, m[0]) for m in matches[:3]))
        labels, value = matches[0]
        series = _format_series(self.metric, labels)
        bounds = []
        if self.min is not None:
            bounds.append("min %s" % _fmt(self.min))
        if self.max is not None:
            bounds.append("max %s" % _fmt(self.max))
        message = "%s = %s (%s)" % (series, _fmt(value), ", ".join(bounds))
        ok = not math.isnan(value) and (self.min is None or value >= self.min) and \
            (self.max is None or value <= self.max)
        if not ok:
            message += ", out of bounds" if not math.isnan(value) else ", not a number"
        return ok, _json_number(value), message


PROBES = {
    "http": HttpProbe,
    "tcp": TcpProbe,
    "postgres": PostgresProbe,
    "redis": RedisProbe,
    "docker": DockerProbe,
    "kubernetes": KubernetesProbe,
    "disk": DiskProbe,
    "memory": MemoryProbe,
    "load": LoadProbe,
    "metric": MetricProbe,
}


def probe_argspec():
    """The suboptions of ``probes``: the common options, then every type's, merged (an option that two
    types share, like ``port``, must have the same spec in both)."""
    spec = dict(
        name=dict(type="str"),
        type=dict(type="str"),
        timeout=dict(type="float", default=DEFAULT_TIMEOUT),
        severity=dict(type="str", default=CRITICAL),
        component=dict(type="str"),
    )
    return compose(spec, *(PROBES[t].argspec for t in PROBE_TYPES))


def _fmt(number):
    if isinstance(number, float):
        if not math.isfinite(number):
            return _json_number(number)
        if number.is_integer() and abs(number) < 1e15:
            return str(int(number))
        return "%g" % number
    return str(number)


def _bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def build_probes(specs):
    """Validate every probe before any runs. Raises one ValidationError naming each bad probe."""
    if not specs:
        raise ValidationError("probes is empty; give at least one probe")
    probes, errors, seen = [], [], {}
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict):
            errors.append("probes[%d] must be a dict with a name and a type" % index)
            continue
        name = spec.get("name")
        if _missing(name):
            errors.append("probes[%d]: name is required" % index)
            continue
        where = "probes[%d] (%s)" % (index, name)
        if name in seen:
            errors.append("%s: duplicate name; probes[%d] has it too" % (where, seen[name]))
            continue
        seen[name] = index
        ptype = spec.get("type")
        if ptype not in PROBES:
            errors.append("%s: type %s; expected one of %s" % (
                where, "is required" if _missing(ptype) else "%r is unknown" % ptype, ", ".join(PROBE_TYPES)))
            continue
        try:
            probes.append(PROBES[ptype](index, spec))
        except ValidationError as err:
            errors.append(str(err))
    if errors:
        raise ValidationError("; ".join(errors))
    return probes


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------
class ProbeService:
    """Run probes concurrently, in rounds, until GO (and stable) or the deadline."""

    def __init__(self, probes, wait_for=0.0, interval=1.0, stable_for=0.0, concurrency=32):
        self.wait_for = _number({"wait_for": wait_for}, "wait_for", None, minimum=0, maximum=MAX_TIMEOUT, default=0.0)
        self.interval = _number({"interval": interval}, "interval", None, above=0, maximum=MAX_TIMEOUT, default=1.0)
        self.stable_for = _number({"stable_for": stable_for}, "stable_for", None, minimum=0, maximum=MAX_TIMEOUT,
                                  default=0.0)
        self.concurrency = _number({"concurrency": concurrency}, "concurrency", None, integer=True,
                                   minimum=1, default=32)
        if self.wait_for and self.stable_for > self.wait_for:
            raise ValidationError("stable_for (%s s) cannot be reached within wait_for (%s s); "
                                  "raise wait_for above stable_for" % (_fmt(self.stable_for), _fmt(self.wait_for)))
        self.probes = build_probes(probes)
        self.secrets = sorted(set(s for p in self.probes for s in p.secrets), key=len, reverse=True)

    # -- one probe ----------------------------------------------------------------------------
    def _result(self, probe, ok, value, message, latency_ms):
        status = GO if ok else (WARN if probe.severity == WARNING else NOGO)
        result = {"name": probe.name, "type": probe.type, "component": probe.component, "severity": probe.severity,
                  "status": status, "value": redact(value, self.secrets), "latency_ms": latency_ms,
                  "message": redact(message, self.secrets)}
        captured = getattr(probe, "captured", None)
        if captured is not None:
            result["captured"] = redact(captured, self.secrets)
        return result

    def _probe_one(self, item, deadline):
        probe, timeout = item
        own = deadline.sub(timeout)
        started = time.monotonic()
        try:
            ok, value, message = probe.check(own)
        except TradeopsError as err:
            ok, value, message = False, None, str(err)
        elapsed = time.monotonic() - started
        if ok and elapsed > timeout + OVERRUN_GRACE:
            ok, message = False, "%s, but only after %.1fs, beyond its %.1fs timeout" % (message, elapsed, timeout)
        return self._result(probe, ok, value, message, int(elapsed * 1000))

    def _on_error(self, item, elapsed, exc):
        probe, timeout = item
        if exc is not None:
            message = "internal error: %s: %s" % (type(exc).__name__, exc)
        else:
            message = "no answer within its %.1fs timeout (abandoned after %.1fs)" % (timeout, elapsed)
        return self._result(probe, False, None, message, int((elapsed or 0) * 1000))

    # -- one round ----------------------------------------------------------------------------
    def run_round(self, deadline=None):
        """Run every probe once, concurrently. ``deadline`` (the wait_for one) caps each timeout."""
        items = []
        for probe in self.probes:
            timeout = probe.timeout
            if deadline is not None:
                timeout = max(0.05, min(timeout, deadline.remaining()))
            items.append((probe, timeout))
        longest = max(t for dummy, t in items)
        return fan_out(items, self._probe_one, self.concurrency, longest, self._on_error, grace=ABANDON_GRACE)

    # -- rounds until GO ----------------------------------------------------------------------
    def run(self, sleep=time.sleep):
        started = time.monotonic()
        deadline = Deadline(self.wait_for) if self.wait_for > 0 else None
        attempts = 0
        streak_start = None  # start of the first round of the current run of GO rounds
        last_nogo = None  # (seconds into the run, names) of the latest NO-GO round
        gave_up = None
        while True:
            round_start = time.monotonic()
            results = self.run_round(deadline)
            attempts += 1
            go = not any(r["status"] == NOGO for r in results)
            now = time.monotonic()
            if go:
                if streak_start is None:
                    streak_start = round_start
                if round_start - streak_start >= self.stable_for:
                    break
                next_at = min(round_start + self.interval, streak_start + self.stable_for)
                finish_at = max(now, streak_start + self.stable_for)
            else:
                streak_start = None
                last_nogo = (round_start - started, [r["name"] for r in results if r["status"] == NOGO])
                if deadline is None:
                    break
                next_at = round_start + self.interval
                finish_at = max(now, next_at) + self.stable_for
            if deadline is not None and finish_at >= deadline.at:
                gave_up = "the wait_for deadline of %s s" % _fmt(self.wait_for)
                break
            sleep(max(0.0, next_at - time.monotonic()))
        return self._summary(results, attempts, started, streak_start, round_start, last_nogo, gave_up)

    def _summary(self, results, attempts, started, streak_start, round_start, last_nogo, gave_up):
        nogo = [r["name"] for r in results if r["status"] == NOGO]
        warns = [r["name"] for r in results if r["status"] == WARN]
        stable = round_start - streak_start if streak_start is not None else 0.0
        status = GO if not nogo and stable >= self.stable_for else NOGO
        elapsed = time.monotonic() - started
        tries = "" if attempts == 1 else " after %d rounds in %.1fs" % (attempts, elapsed)
        if status == GO:
            msg = "GO: %d of %d probes GO%s%s" % (
                len(results) - len(warns), len(results), (", WARN: %s" % ", ".join(warns)) if warns else "", tries)
            if self.stable_for:
                msg += ", stable for %.1fs" % stable
        elif nogo:
            msg = "NO-GO: %d of %d probes NO-GO: %s%s" % (
                len(nogo), len(results), "; ".join("%s: %s" % (r["name"], r["message"]) for r in results
                                                   if r["status"] == NOGO), tries)
        else:
            msg = "NO-GO: every critical probe is GO, but only for %.1fs of the required stable_for %s s%s" % (
                stable, _fmt(self.stable_for), tries)
            if last_nogo:
                msg += "; %.1fs into the run these were NO-GO: %s" % (last_nogo[0], ", ".join(last_nogo[1]))
        if status == NOGO and gave_up:
            msg += "; stopped at %s" % gave_up
        return {
            "changed": False,
            "status": status,
            "msg": redact(msg, self.secrets),
            "probes": results,
            "nogo": nogo,
            "warning_probes": warns,
            "nogo_components": sorted(set(r["component"] for r in results
                                          if r["status"] == NOGO and r["component"] is not None)),
            "attempts": attempts,
            "stable_seconds": round(stable, 3),
            "elapsed_ms": int(elapsed * 1000),
        }

    @staticmethod
    def failure_message(out):
        """For fail_on_nogo: what is NO-GO, and what to do next. None when GO."""
        if out["status"] == GO:
            return None
        parts = []
        for r in out["probes"]:
            if r["status"] == NOGO:
                component = (" (component %s)" % r["component"]) if r["component"] else ""
                parts.append("%s%s: %s" % (r["name"], component, r["message"]))
        if parts:
            what = "%d of %d probes are NO-GO: %s." % (len(parts), len(out["probes"]), "; ".join(parts))
            hint = ("Repair or restart the NO-GO components%s and re-run, raise wait_for to give them time to "
                    "recover, or set fail_on_nogo=false to only assess." % (
                        (" (%s)" % ", ".join(out["nogo_components"])) if out["nogo_components"] else ""))
        else:
            what = out["msg"] + "."
            hint = "The probes are flapping: find out why before resuming, or raise wait_for."
        return "NO-GO: %s %s" % (what, hint)
