# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kill-switch backends and the concurrent, verified halt/resume service.

Plain Python with no Ansible globals: ``HaltService(targets, ...).run()`` returns a result dict;
the ``halt_trading`` module is a thin adapter around it. Each target has an ordered chain of
methods. For each method we act, then READ THE STATE BACK; only a read-back that shows trading
stopped counts as verified. If a method does not verify, the next one in the chain is tried.

Read-back comes in two strengths, reported as ``verified_by``:
- ``status``: a verify request (an HTTP status endpoint of the engine, method- or target-level)
  shows the halted value. This proves the engine itself reports trading stopped.
- ``flag``: the method's own state reads back as set (redis key, flag file, container
  flag or stopped container, deployment at zero ready replicas). Used only when no verify
  request is configured for the method or the target.

A verified halt must hold until the gated resume lifts it. Every halted target reports the
sources that hold it (``held_by``: each with ``expires_at`` and ``survives_restart``), read back
after the call. With ``hold_until_resumed`` (the default) Redis halt keys carry no expiry, and
every halt call, including one that finds the target already halted, removes an expiry that a
runbook or an older call set; without it, every halt call refreshes the key's TTL.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import io
import json
import os
import posixpath
import tarfile
import tempfile
import time

from ansible_collections.tradeops.remediation.plugins.module_utils import _docker, _http, _kubernetes, _redis
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import Deadline, check_timeout, fan_out
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, TradeopsError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import compose, require, whole

HALTED = "halted"
RESUMED = "resumed"
METHOD_TYPES = ("http", "redis", "file", "docker", "kubernetes")
K8S_REPLICAS_ANNOTATION = "tradeops.io/halted-replicas"
VERIFY_POLL_INTERVAL = 0.1


def hold_summary(holds, expires_at, durable):
    """How long a halt holds, in words: its sources and when it would lapse. The one wording used by the
    module result, the role's report, the incident report and ``tradeops run``."""
    if not holds:
        return "NO SOURCE HOLDS IT"
    sources = "+".join(h.get("method") or "?" for h in holds)
    if durable:
        until = "until the gated resume"
        if expires_at is not None:
            until += " (earliest source expiry %s)" % _utc(expires_at)
    elif expires_at is not None:
        until = "LAPSES AT %s" % _utc(expires_at)
    else:
        until = "LAPSES ON AN ENGINE RESTART"
    return "%s, %s" % (sources, until)


def _utc(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _now_ms(start):
    return int((time.monotonic() - start) * 1000)


# --------------------------------------------------------------------------------------------
# Verify requests (the engine's own status endpoint)
# --------------------------------------------------------------------------------------------
class VerifyRequest:
    """GET a status URL and compare one JSON field with the halted / resumed value."""

    argspec = _http.argspec("transport", "auth", url=dict(type="str"), method=dict(type="str"),
                            field=dict(type="str"), value=dict(type="raw"), resumed_value=dict(type="raw"),
                            wait=dict(type="float"))

    def __init__(self, spec, where):
        self.where = where
        self.url = spec.get("url")
        if not self.url:
            raise ValidationError("%s.url is required" % where)
        _http.check_url(self.url, where + ".url")
        self.method = spec.get("method") or "GET"
        self.field = spec.get("field")
        if not self.field:
            raise ValidationError("%s.field is required (the JSON field that shows the halt)" % where)
        if spec.get("value") is None:
            raise ValidationError("%s.value is required (the value of %s that means trading is halted)"
                                  % (where, self.field))
        self.halted_value = spec.get("value")
        self.resumed_value = spec.get("resumed_value")
        self.wait = check_timeout(spec.get("wait") if spec.get("wait") is not None else 2.0, where + ".wait",
                                  minimum=0)
        self.client = _http.client(_http.http_options(spec, where))

    def read(self, deadline):
        """Return (halted: bool|None, observed value) from one request. None = cannot tell."""
        resp = self.client.request(self.url, self.method, deadline=deadline)
        if resp.status >= 400:
            raise BackendError("verify %s answered HTTP %d" % (self.url, resp.status))
        try:
            value = _http.json_field(resp.json(), self.field)
        except KeyError:
            raise BackendError("verify %s: field %r not in the response" % (self.url, self.field))
        if _http.values_match(value, self.halted_value):
            return True, value
        if self.resumed_value is None or _http.values_match(value, self.resumed_value):
            return False, value
        return None, value

    def wait_for(self, want_halted, deadline):
        """Poll until the state matches, ``wait`` seconds pass, or the deadline ends."""
        sub = deadline.sub(self.wait)
        last = None
        while True:
            halted, value = self.read(deadline)
            last = value
            if halted is want_halted:
                return True, value
            if sub.remaining() <= VERIFY_POLL_INTERVAL:
                return False, last
            time.sleep(VERIFY_POLL_INTERVAL)


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------
class Method:
    """One kill-switch method. Subclasses implement act/undo/read_flag."""

    type = None
    required = ()
    # The argument spec of this type's options (its own and its backend's fragment), no defaults:
    # halt_trading composes the methods' suboptions from every type's (method_argspec()).
    argspec = {}
    # A method that stops the engine itself (container stop, scale to zero): with apply_all it is still
    # used as a fallback, but not applied on top of a halt that already verified, since it would take
    # the engine (and the evidence in it) down when a durable flag holds the halt as well.
    disruptive = False
    # A method whose halt outlives the engine's process and is read back by itself (a flag file, a Redis key, a
    # flag inside the container): what durable_only applies to an engine that is down.
    durable = False

    def __init__(self, spec, where):
        self.spec = spec
        self.where = where
        require(spec, self.required, where, "the %s method" % self.type)
        verify = spec.get("verify")
        self.verify = VerifyRequest(verify, where + ".verify") if verify else None

    def describe(self):
        return self.type

    def read_flag(self, deadline):
        """Return True if this method's own halt flag is set, False if not, None if unknown."""
        return None

    def halt(self, reason, deadline):
        raise NotImplementedError

    def resume(self, deadline):
        raise NotImplementedError

    def refresh(self, deadline):
        """Re-assert a flag that is already set (a Redis key's expiry). Returns what was done, or None."""
        return None

    def hold(self, deadline):
        """The halt source this method holds right now, or None: a dict with ``source``,
        ``expires_at`` (epoch seconds, None for never) and ``survives_restart`` (of the engine)."""
        if self.read_flag(deadline) is not True:
            return None
        return {"method": self.type, "source": self.describe(), "expires_at": None, "survives_restart": True}

    def close(self):
        """Release what the calls to this target kept open (a connection). Called once its work is done."""


class HttpMethod(Method):
    type = "http"
    required = ("url",)
    argspec = _http.argspec("transport", "auth", url=dict(type="str"), method=dict(type="str"), body=dict(type="raw"),
                            status_codes=dict(type="list", elements="int"), resume_url=dict(type="str"),
                            resume_method=dict(type="str"), resume_body=dict(type="raw"))

    def __init__(self, spec, where):
        super(HttpMethod, self).__init__(spec, where)
        self.url = _http.check_url(spec["url"], where + ".url")
        self.http_method = (spec.get("method") or "POST").upper()
        self.body = spec.get("body")
        self.status_codes = list(spec.get("status_codes") or [200, 201, 202, 204])
        self.resume_url = spec.get("resume_url")
        if self.resume_url:
            _http.check_url(self.resume_url, where + ".resume_url")
        self.resume_method = (spec.get("resume_method") or "POST").upper()
        self.resume_body = spec.get("resume_body")
        self.client = _http.client(_http.http_options(spec, where))

    def describe(self):
        return "http %s %s" % (self.http_method, self.url)

    def _send(self, url, method, body, deadline):
        resp = self.client.request(url, method, body, deadline=deadline)
        if resp.status not in self.status_codes:
            raise BackendError("%s %s answered HTTP %d: %s" % (method, url, resp.status, resp.text(120)))
        return "HTTP %d" % resp.status

    def halt(self, reason, deadline):
        body = self.body
        if body is None:
            body = {"reason": reason}
        elif isinstance(body, dict) and "reason" not in body:
            body = dict(body, reason=reason)
        return self._send(self.url, self.http_method, body, deadline)

    def hold(self, deadline):
        # An engine keeps an API halt in its memory: it cannot be read back by itself, and a restart
        # of the engine by its supervisor drops it. HaltService reports it when it was applied now.
        return None

    def resume(self, deadline):
        if not self.resume_url:
            raise BackendError("no resume_url is configured for %s; set methods[].resume_url" % self.url)
        return self._send(self.resume_url, self.resume_method, self.resume_body, deadline)


class FileMethod(Method):
    """A flag file on the module's host (seed 002: touch /tmp/EMERGENCY_STOP)."""

    type = "file"
    durable = True
    required = ("path",)
    argspec = dict(path=dict(type="path"))

    def __init__(self, spec, where):
        super(FileMethod, self).__init__(spec, where)
        self.path = spec["path"]
        if not os.path.isabs(self.path):
            raise ValidationError("%s.path must be absolute, got %r" % (where, self.path))

    def describe(self):
        return "file %s" % self.path

    def read_flag(self, deadline):
        return os.path.exists(self.path)

    def halt(self, reason, deadline):
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise BackendError("directory %s does not exist" % directory)
        content = json.dumps({"reason": reason, "at": time.time(), "by": "tradeops.remediation.halt_trading"})
        fd, tmp = tempfile.mkstemp(prefix=".tradeops-", dir=directory)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(content + "\n")
            os.chmod(tmp, 0o644)
            os.rename(tmp, self.path)
        except OSError as err:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise BackendError("cannot write %s: %s" % (self.path, err))
        return "flag written"

    def resume(self, deadline):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return "flag absent"
        except OSError as err:
            raise BackendError("cannot remove %s: %s" % (self.path, err))
        return "flag removed"


class RedisMethod(Method):
    """A halt key with a TTL (seed 003: SET emergency_halt true EX 3600)."""

    type = "redis"
    durable = True
    required = ("key",)
    argspec = _redis.argspec(key=dict(type="str", no_log=False), ttl=dict(type="int"), value=dict(type="str"))

    def __init__(self, spec, where):
        super(RedisMethod, self).__init__(spec, where)
        self.key = spec["key"]
        self.ttl = whole(spec.get("ttl"), where + ".ttl", 3600, 1, 366 * 86400)
        # Set by HaltService: no expiry on the key while the incident is open (see the module docs).
        self.hold_until_resumed = True
        self.redis = _redis.redis_options(spec, where)
        self.value = spec.get("value")
        # the read, the SET and the read-back of this engine's key over one connection (closed by close())
        self._session = _redis.Session(self.redis, "the redis kill-switch method")

    def describe(self):
        return "redis %s key %s" % (self.redis.describe(), self.key)

    def _call(self, deadline, fn):
        return self._session.call(deadline, fn)

    def close(self):
        self._session.close()

    def read_flag(self, deadline):
        return bool(self._call(deadline, lambda c: c.exists(self.key)))

    def halt(self, reason, deadline):
        value = self.value if self.value is not None else json.dumps({"reason": reason, "at": time.time()})
        if self.hold_until_resumed:
            self._call(deadline, lambda c: c.set(self.key, value))
            return "SET %s (no expiry: held until resumed)" % self.key
        self._call(deadline, lambda c: c.set(self.key, value, ex=self.ttl))
        return "SET %s EX %d" % (self.key, self.ttl)

    def refresh(self, deadline):
        if self.hold_until_resumed:
            if self._call(deadline, lambda c: c.persist(self.key)):
                return "PERSIST %s (its expiry removed: held until resumed)" % self.key
            return None
        if self._call(deadline, lambda c: c.expire(self.key, self.ttl)):
            return "EXPIRE %s %d (TTL refreshed)" % (self.key, self.ttl)
        return None

    def hold(self, deadline):
        pttl = self._call(deadline, lambda c: c.pttl(self.key))
        if pttl is None or pttl == -2:
            return None
        expires_at = None if pttl < 0 else round(time.time() + pttl / 1000.0, 3)
        return {"method": self.type, "source": "redis key %s" % self.key, "expires_at": expires_at,
                "survives_restart": True}

    def resume(self, deadline):
        n = self._call(deadline, lambda c: c.delete(self.key))
        return "DEL %s (%d)" % (self.key, n)


class DockerMethod(Method):
    """A flag file inside a container (docker exec touch), or stop the container.

    The flag lives in the container's own filesystem, so it survives ``docker restart``. A
    container that is not running (crashed, stopped) cannot run ``docker exec``: there the flag is
    copied in and read back through the archive API (what ``docker cp`` does), so a crashed engine
    is halted before it is restarted and comes back halted.
    """

    type = "docker"
    required = ("container",)
    argspec = _docker.argspec(action=dict(type="str"), flag_path=dict(type="str"), stop_timeout=dict(type="int"))

    def __init__(self, spec, where):
        super(DockerMethod, self).__init__(spec, where)
        self.docker = _docker.docker_options(spec, where)
        self.container = self.docker.container
        self.action = spec.get("action") or "flag"
        if self.action not in ("flag", "stop"):
            raise ValidationError("%s.action must be flag or stop, got %r" % (where, self.action))
        self.disruptive = self.action == "stop"
        self.durable = self.action == "flag"
        self.flag_path = spec.get("flag_path") or "/tmp/EMERGENCY_STOP"
        self.stop_timeout = whole(spec.get("stop_timeout"), where + ".stop_timeout", 10, 0, 3600)

    def describe(self):
        if self.action == "stop":
            return "docker stop %s" % self.container
        return "docker flag %s:%s" % (self.container, self.flag_path)

    def _call(self, deadline, fn):
        return _docker.container_call(self.docker, deadline, fn, "the docker kill-switch method")

    def _exec(self, container, argv):
        if container.status != "running":
            raise BackendError("container %s is %s, cannot exec in it" % (self.container, container.status))
        result = container.exec_run(argv)
        return result.exit_code

    def _read_stopped(self, container):
        """Whether the flag exists in a container that is not running (docker cp from it)."""
        from docker.errors import NotFound
        try:
            stream, _stat = container.get_archive(self.flag_path)
        except NotFound:
            return False
        for _chunk in stream:  # drain the response, so the connection is released
            pass
        return True

    def _copy_flag(self, container, reason):
        """Write the flag into a container that is not running (docker cp into it)."""
        directory, name = posixpath.split(self.flag_path)
        content = (json.dumps({"reason": reason, "at": time.time(), "by": "tradeops.remediation.halt_trading"})
                   + "\n").encode("utf-8")
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = 0o644
        info.mtime = int(time.time())
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.addfile(info, io.BytesIO(content))
        if not container.put_archive(directory or "/", archive.getvalue()):
            raise BackendError("cannot copy %s into %s (%s)" % (self.flag_path, self.container, container.status))

    def read_flag(self, deadline):
        def read(container):
            if self.action == "stop":
                return container.status != "running"
            if container.status != "running":
                return self._read_stopped(container)
            return self._exec(container, ["test", "-e", self.flag_path]) == 0
        return self._call(deadline, read)

    def halt(self, reason, deadline):
        def act(container):
            if self.action == "stop":
                container.stop(timeout=self.stop_timeout)
                return "stopped"
            if container.status != "running":
                self._copy_flag(container, reason)
                return "flag copied into the %s container" % container.status
            code = self._exec(container, ["touch", self.flag_path])
            if code != 0:
                raise BackendError("touch %s in %s exited %d" % (self.flag_path, self.container, code))
            return "flag written"
        return self._call(deadline, act)

    def resume(self, deadline):
        def act(container):
            if self.action == "stop":
                container.start()
                return "started"
            code = self._exec(container, ["rm", "-f", self.flag_path])
            if code != 0:
                raise BackendError("rm %s in %s exited %d" % (self.flag_path, self.container, code))
            return "flag removed"
        return self._call(deadline, act)


class KubernetesMethod(Method):
    """Scale a deployment to zero, recording its replicas in an annotation for resume."""

    type = "kubernetes"
    required = ("deployment",)
    argspec = _kubernetes.argspec(deployment=dict(type="str"))
    disruptive = True

    def __init__(self, spec, where):
        super(KubernetesMethod, self).__init__(spec, where)
        self.deployment = spec["deployment"]
        self.k8s = _kubernetes.kubernetes_options(spec, where)
        self.namespace = self.k8s.namespace

    def describe(self):
        return "kubernetes scale %s/%s to 0" % (self.namespace, self.deployment)

    def _call(self, deadline, fn):
        return _kubernetes.call(self.k8s, deadline, fn, "deployment %s/%s" % (self.namespace, self.deployment),
                                purpose="the kubernetes kill-switch method")

    def _read(self, api, timeout):
        return api.read_namespaced_deployment(self.deployment, self.namespace, _request_timeout=timeout)

    def read_flag(self, deadline):
        def read(api, timeout):
            dep = self._read(api, timeout)
            return (dep.spec.replicas or 0) == 0 and not (dep.status.ready_replicas or 0)
        return self._call(deadline, read)

    def halt(self, reason, deadline):
        def act(api, timeout):
            dep = self._read(api, timeout)
            replicas = dep.spec.replicas or 0
            if replicas == 0:
                return "already at 0 replicas"
            body = {"metadata": {"annotations": {K8S_REPLICAS_ANNOTATION: str(replicas)}},
                    "spec": {"replicas": 0}}
            api.patch_namespaced_deployment(self.deployment, self.namespace, body, _request_timeout=timeout)
            return "scaled %d -> 0" % replicas
        return self._call(deadline, act)

    def resume(self, deadline):
        def act(api, timeout):
            dep = self._read(api, timeout)
            annotations = dep.metadata.annotations or {}
            recorded = annotations.get(K8S_REPLICAS_ANNOTATION)
            if recorded is None:
                if (dep.spec.replicas or 0) > 0:
                    return "not halted by tradeops (%d replicas)" % dep.spec.replicas
                raise BackendError("deployment %s/%s is at 0 replicas with no %s annotation; scale it by hand"
                                   % (self.namespace, self.deployment, K8S_REPLICAS_ANNOTATION))
            replicas = int(recorded)
            body = {"metadata": {"annotations": {K8S_REPLICAS_ANNOTATION: None}}, "spec": {"replicas": replicas}}
            api.patch_namespaced_deployment(self.deployment, self.namespace, body, _request_timeout=timeout)
            return "scaled 0 -> %d" % replicas
        return self._call(deadline, act)


BACKENDS = {
    "http": HttpMethod,
    "file": FileMethod,
    "redis": RedisMethod,
    "docker": DockerMethod,
    "kubernetes": KubernetesMethod,
}


def verify_argspec():
    """The suboptions of a verify request (``targets[].verify``, ``targets[].methods[].verify``)."""
    return compose(VerifyRequest.argspec)


def method_argspec():
    """The suboptions of ``targets[].methods``: every method type's options, merged (an option two types
    share, like ``validate_certs``, has the same spec in both), and the method's own verify request."""
    return compose(dict(type=dict(type="str")), *(BACKENDS[t].argspec for t in METHOD_TYPES),
                   dict(verify=dict(type="dict", options=verify_argspec())))


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------
class Target:
    def __init__(self, index, spec):
        if not isinstance(spec, dict):
            raise ValidationError("targets[%d] must be a dict with name and methods" % index)
        self.name = spec.get("name")
        if not self.name:
            raise ValidationError("targets[%d].name is required" % index)
        self.index = index
        where = "targets[%d] (%s)" % (index, self.name)
        methods = spec.get("methods")
        if not methods:
            raise ValidationError("%s: methods is empty; give at least one kill-switch method" % where)
        verify = spec.get("verify")
        self.verify = VerifyRequest(verify, where + ": verify") if verify else None
        self.methods = []
        for m_index, mspec in enumerate(methods):
            m_where = "%s: methods[%d]" % (where, m_index)
            if not isinstance(mspec, dict):
                raise ValidationError("%s must be a dict with a type" % m_where)
            mtype = mspec.get("type")
            if mtype not in BACKENDS:
                raise ValidationError("%s.type: unknown method %r; expected one of %s"
                                      % (m_where, mtype, ", ".join(METHOD_TYPES)))
            self.methods.append(BACKENDS[mtype](mspec, m_where))

    def verify_for(self, method):
        return method.verify or self.verify

    def close(self):
        for method in self.methods:
            method.close()


class InvalidTarget:
    """A target whose options are wrong. It is reported as failed; the others still run."""

    def __init__(self, index, spec, error):
        self.index = index
        self.name = (spec.get("name") if isinstance(spec, dict) else None) or "targets[%d]" % index
        self.error = error


def halt_argspec():
    """The halt_trading module's argument spec: the module and its controller-side run (the action plugin) share it.

    The suboptions of targets are each method type's options, composed from its backend's option groups
    (_http.py, _redis.py, _docker.py, _kubernetes.py) by :func:`method_argspec`.
    """
    return dict(
        targets=dict(
            type="list",
            elements="dict",
            required=True,
            options=dict(
                name=dict(type="str"),
                verify=dict(type="dict", options=verify_argspec()),
                methods=dict(type="list", elements="dict", options=method_argspec()),
            ),
        ),
        state=dict(type="str", choices=["halted", "resumed"], default="halted"),
        reason=dict(type="str", default="tradeops emergency halt"),
        timeout=dict(type="float", default=10.0),
        concurrency=dict(type="int", default=64),
        verify=dict(type="bool", default=True),
        apply_all=dict(type="bool", default=False),
        durable_only=dict(type="bool", default=False),
        hold_until_resumed=dict(type="bool", default=True),
        quiesce=dict(type="float", default=0.0),
        quiesce_wait=dict(type="bool", default=True),
    )


# A quiesce is a few order intervals; an hour is a typo, not a wait to make before the orders proof.
MAX_QUIESCE = 600.0


def quiesce_left(targets, seconds, state=HALTED, now=None):
    """Seconds still to wait so that every engine this call changed has had ``seconds`` since its own verified
    halt (or resume) for an order in flight to land: the engines halted first in a large fan-out have waited
    through the rest of it. 0 when no engine was changed (all already halted, or none verified)."""
    key = "halted_at" if state == HALTED else "resumed_at"
    marks = [float(t[key]) for t in targets
             if t.get(key) is not None and (state != HALTED or t.get("before") != HALTED)]
    if not marks or seconds <= 0:
        return 0.0
    return max(0.0, float(seconds) - ((time.time() if now is None else float(now)) - max(marks)))


def run_halt(params, check_mode=False, diff=False):
    """What the halt_trading module does with its validated ``params``, wherever it runs.

    Returns ``(result, warnings, failure message or None)``. Raises TradeopsError when the call as a whole is
    invalid (nothing was done).
    """
    quiesce = check_timeout(params.get("quiesce") or 0.0, "quiesce", minimum=0.0, maximum=MAX_QUIESCE)
    service = HaltService(
        params["targets"],
        state=params["state"],
        reason=params["reason"],
        timeout=params["timeout"],
        concurrency=params["concurrency"],
        verify=params["verify"],
        check_mode=check_mode,
        apply_all=params["apply_all"],
        hold_until_resumed=params["hold_until_resumed"],
        durable_only=params.get("durable_only", False),
    )
    result = service.run()
    result["finished_at"] = round(time.time(), 3)  # before the quiesce: when the last target was done
    if quiesce and not check_mode:
        wait = quiesce_left(result["targets"], quiesce, params["state"])
        result["quiesce_until"] = round(time.time() + wait, 3)
        if params.get("quiesce_wait", True):
            time.sleep(wait)
            result["quiesced_s"] = round(wait, 3)
        else:
            result["quiesce_left_s"] = round(wait, 3)
    found_diff = result.pop("diff")
    if diff:
        result["diff"] = found_diff
    warnings = []
    if not params["verify"] and result["unverified"]:
        warnings.append("verify=false: %d targets were not read back: %s"
                        % (len(result["unverified"]), ", ".join(result["unverified"])))
    if result.get("not_durable"):
        warnings.append("the halt of %d targets would lapse by itself (it expires, or only the engine's memory holds "
                        "it, lost on a restart): %s. Give them a durable method (file, redis, docker flag) and "
                        "apply_all=true." % (len(result["not_durable"]), ", ".join(result["not_durable"])))
    return result, warnings, HaltService.failure_message(result, verify=params["verify"])


def build_targets(specs):
    """Validate every target. Returns (valid targets, invalid targets).

    In an emergency one mistyped host must not stop the other 199 from being halted, so a
    target with bad options is set aside (and makes the module fail afterwards), while the
    well-formed ones still run. Errors that concern the whole call raise at once.
    """
    if not specs:
        raise ValidationError("targets is empty; give at least one target")
    targets, invalid, seen = [], [], set()
    for i, spec in enumerate(specs):
        try:
            target = Target(i, spec)
        except ValidationError as err:
            invalid.append(InvalidTarget(i, spec, str(err)))
            continue
        if target.name in seen:
            raise ValidationError("targets[%d]: duplicate target name %r" % (i, target.name))
        seen.add(target.name)
        targets.append(target)
    return targets, invalid


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------
class _Paused(object):
    """A target halted by the first pass of :meth:`HaltService._halt_in_two_passes`, its chain not done yet."""

    __slots__ = ("target", "steps", "result", "left")

    def __init__(self, target, steps, result, left):
        self.target, self.steps, self.result, self.left = target, steps, result, left


class HaltService:
    """Halt or resume many targets concurrently, each verified, each within its deadline."""

    def __init__(self, targets, state=HALTED, reason="tradeops emergency halt", timeout=10.0,
                 concurrency=64, verify=True, check_mode=False, apply_all=False, hold_until_resumed=True,
                 durable_only=False):
        if state not in (HALTED, RESUMED):
            raise ValidationError("state must be halted or resumed, got %r" % state)
        if timeout is None:
            raise ValidationError("timeout must be a positive number of seconds, got None")
        self.timeout = check_timeout(timeout, "timeout")
        if concurrency is None or int(concurrency) < 1:
            raise ValidationError("concurrency must be at least 1, got %r" % concurrency)
        self.targets, self.invalid = build_targets(targets)
        self.hold_until_resumed = bool(hold_until_resumed)
        for target in self.targets:
            for method in target.methods:
                if isinstance(method, RedisMethod):
                    method.hold_until_resumed = self.hold_until_resumed
        self.state = state
        self.reason = reason
        self.concurrency = int(concurrency)
        self.verify = verify
        self.check_mode = check_mode
        # Apply every method of the chain, not just up to the first that verifies, so that the
        # durable ones (flag file, redis key, container flag) hold the halt across a restart.
        self.apply_all = apply_all
        if durable_only:
            if state != HALTED:
                raise ValidationError("durable_only applies to state=halted only, got state=%s" % state)
            self._durable_only()
            self.apply_all = True

    def _durable_only(self):
        """Keep each chain's durable methods only, each read back by its own flag: the engine is down (a container
        created, not started), its API cannot answer, and asking it would only spend the timeout."""
        kept = []
        for target in self.targets:
            durable = [m for m in target.methods if m.durable]
            for method in target.methods:
                if not method.durable:
                    method.close()
            if not durable:
                self.invalid.append(InvalidTarget(target.index, {"name": target.name}, (
                    "targets[%d] (%s): durable_only: no method of its chain outlives the engine's process (file, "
                    "redis, docker flag); add one to its methods" % (target.index, target.name))))
                continue
            for method in durable:
                method.verify = None
            target.methods, target.verify = durable, None
            kept.append(target)
        self.targets = kept
        self.invalid.sort(key=lambda bad: bad.index)

    # -- reading state -------------------------------------------------------------------
    def _current(self, target, deadline):
        """Best-effort current state of a target: (halted True/False/None, how, detail).

        A status request settles it at once. Otherwise the target is halted if any flag is
        set, trading if every flag reads back unset, and unknown if any cannot be read.
        """
        errors = []
        all_clear = True
        unreachable = set()  # a status endpoint that failed once is not asked again
        for method in target.methods:
            verify = target.verify_for(method)
            try:
                if verify is not None and id(verify) not in unreachable:
                    unreachable.add(id(verify))
                    halted, value = verify.read(deadline.sub(min(2.0, deadline.remaining() / 3)))
                    if halted is not None:
                        return halted, "status", "%s=%r" % (verify.field, value)
                flag = method.read_flag(deadline.sub(min(2.0, deadline.remaining() / 3)))
                if flag is True:
                    return True, "flag", method.describe()
                if flag is None:
                    all_clear = False
            except TradeopsError as err:
                errors.append(str(err))
                all_clear = False
        if all_clear:
            return False, "flag", "no halt flag set"
        return None, None, "; ".join(errors)

    def _verify(self, target, method, want_halted, deadline):
        """Read back after acting. Returns (verified, verified_by, detail)."""
        verify = target.verify_for(method)
        if verify is not None:
            ok, value = verify.wait_for(want_halted, deadline)
            return ok, "status", "%s=%r" % (verify.field, value)
        sub = deadline.sub(2.0)
        while True:
            flag = method.read_flag(deadline)
            if flag is None:
                return False, None, "%s has no way to read its state back; configure verify" % method.type
            if flag is want_halted:
                return True, "flag", method.describe()
            if sub.remaining() <= VERIFY_POLL_INTERVAL:
                return False, "flag", "%s still reads %s" % (method.describe(), "unset" if want_halted else "set")
            time.sleep(VERIFY_POLL_INTERVAL)

    # -- one target ------------------------------------------------------------------------
    def _halt_one(self, target, deadline):
        """Halt one target, every step in one go (the steps of :meth:`_halt_steps`, resumed at once)."""
        steps = self._halt_steps(target, deadline)
        try:
            next(steps)
            steps.send(deadline)
        except StopIteration as stop:
            return stop.value
        raise RuntimeError("the halt of %s paused twice" % target.name)

    def _halt_steps(self, target, deadline):
        """Halt one target; a generator whose return value is the target's result.

        With ``apply_all``, it pauses once the target is halted and verified by its first method and more methods
        remain: it yields ``(result so far, seconds left of its deadline)`` and is resumed with ``send(deadline)``
        (a deadline of those seconds, or the same one) to apply the rest of the chain and read back what holds the
        halt. :meth:`run` halts every target this way first, then makes each halt durable: the last engine stops
        trading after one method per engine, not after the whole chain of every engine before it.
        """
        start = time.monotonic()
        result = {"name": target.name, "changed": False, "verified": False, "method": None,
                  "verified_by": None, "methods_tried": [], "error": None, "halted_at": None}
        before, how, detail = self._current(target, deadline)
        result["before"] = {True: "halted", False: "trading"}.get(before, "unknown")
        if self.check_mode:
            result.update(status="would_halt" if before is not True else "already_halted", changed=before is not True,
                          verified=before is True, verified_by=how if before is True else None)
            result["latency_ms"] = _now_ms(start)
            return result
        if before is True and not self.apply_all:
            result.update(status="already_halted", verified=True, verified_by=how, detail=detail)
            self._refresh(target, result, deadline)
            self._holds(target, result, deadline)
            result["latency_ms"] = _now_ms(start)
            return result
        acted = False
        remaining_methods = len(target.methods)
        for index, method in enumerate(target.methods):
            # Each method gets a fair share of what is left, so a hung first method
            # still leaves time for the fallback.
            share = deadline.sub(deadline.remaining() / remaining_methods)
            remaining_methods -= 1
            m_start = time.monotonic()
            attempt = {"index": index, "type": method.type, "action": None, "verified": False,
                       "verified_by": None, "error": None}
            try:
                if self.apply_all and method.disruptive and (result.get("status") is not None or before is True):
                    attempt["action"] = "skipped: already halted; %s would take the engine down" % method.describe()
                    result["methods_tried"].append(attempt)
                    continue
                flag = method.read_flag(share) if self.apply_all else None
                if flag is True:
                    # apply_all: this method's durable flag is already in place (its expiry refreshed)
                    attempt.update(action=method.refresh(share) or "already set", verified=True, verified_by="flag")
                elif self.apply_all and flag is None and before is True:
                    attempt["action"] = "skipped: the engine already reports trading halted"
                else:
                    attempt["action"] = method.halt(self.reason, share)
                    acted = True
                    result["changed"] = True
                    if self.verify:
                        ok, by, detail = self._verify(target, method, True, share)
                        attempt.update(verified=ok, verified_by=by, detail=detail)
                        if not ok:
                            attempt["error"] = "not verified: %s" % detail
            except TradeopsError as err:
                attempt["error"] = str(err)
            attempt["latency_ms"] = _now_ms(m_start)
            result["methods_tried"].append(attempt)
            done = attempt["verified"] or (not self.verify and attempt["action"] and not attempt["error"])
            if done and result.get("status") is None:
                result["method"] = method.type
                result["verified"] = attempt["verified"]
                result["verified_by"] = attempt["verified_by"]
                result["halted_at"] = time.time()
                result["status"] = "halted" if attempt["verified"] else "unverified"
                if not self.apply_all:
                    break
                if index < len(target.methods) - 1 and not deadline.expired():
                    # halted: the rest of the chain (the durable methods) waits until every target is halted
                    result["latency_ms"] = _now_ms(start)
                    paused = time.monotonic()
                    deadline = yield result, deadline.remaining()
                    start += time.monotonic() - paused  # the wait for the other targets is not this one's time
            if deadline.expired():
                break
        if result.get("status") is None:
            if before is True and not acted:
                result.update(status="already_halted", verified=True, verified_by=how)
            else:
                result["status"] = "unverified" if acted else "failed"
        elif result["status"] == "halted" and not acted and before is True:
            result["status"] = "already_halted"
        if result["status"] in ("failed", "unverified"):
            result["error"] = "; ".join("%s: %s" % (a["type"], a["error"]) for a in result["methods_tried"]
                                        if a["error"]) or "deadline exceeded before any method ran"
        else:
            self._holds(target, result, deadline)
        result["latency_ms"] = _now_ms(start)
        return result

    def _refresh(self, target, result, deadline):
        """An already-halted target: re-assert the expiry of every flag that is set (best effort)."""
        for index, method in enumerate(target.methods):
            try:
                action = method.refresh(deadline.sub(min(2.0, deadline.remaining())))
            except TradeopsError as err:
                result["methods_tried"].append({"index": index, "type": method.type, "action": "refresh",
                                                "error": str(err)})
                continue
            if action:
                result["changed"] = True
                result["methods_tried"].append({"index": index, "type": method.type, "action": action,
                                                "error": None})

    def _holds(self, target, result, deadline):
        """Read back, for a halted target, every source that holds its halt and when each expires.

        ``held_by`` lists them; ``expires_at`` is the earliest expiry among them (None: none
        expires); ``durable`` says whether one of them survives an engine restart and never expires,
        i.e. whether the halt holds until the gated resume whatever happens to the engine.
        """
        holds, errors = [], []
        for index, method in enumerate(target.methods):
            try:
                hold = method.hold(deadline.sub(min(2.0, deadline.remaining())))
            except TradeopsError as err:
                errors.append("%s: %s" % (method.type, err))
                continue
            if hold is None and isinstance(method, HttpMethod):
                applied = any(a["index"] == index and a.get("action") and not a.get("error")
                              and not str(a["action"]).startswith("skipped") for a in result["methods_tried"])
                if applied or (result.get("method") == "http" and result["status"] == "halted"):
                    hold = {"method": method.type, "source": "%s (in the engine's memory)" % method.describe(),
                            "expires_at": None, "survives_restart": False}
            if hold is not None:
                holds.append(hold)
        expiries = [h["expires_at"] for h in holds if h["expires_at"] is not None]
        result["held_by"] = holds
        result["expires_at"] = min(expiries) if expiries else None
        result["durable"] = any(h["survives_restart"] and h["expires_at"] is None for h in holds)
        result["hold_summary"] = hold_summary(holds, result["expires_at"], result["durable"])
        if errors:
            result["hold_errors"] = errors

    def _resume_one(self, target, deadline):
        start = time.monotonic()
        result = {"name": target.name, "changed": False, "verified": False, "method": None,
                  "verified_by": None, "methods_tried": [], "error": None, "resumed_at": None}
        before, how, detail = self._current(target, deadline)
        result["before"] = {True: "halted", False: "trading"}.get(before, "unknown")
        if before is False:
            result.update(status="already_resumed", verified=True, verified_by=how, detail=detail)
            result["latency_ms"] = _now_ms(start)
            return result
        if self.check_mode:
            result.update(status="would_resume", changed=True)
            result["latency_ms"] = _now_ms(start)
            return result
        # Undo every method in the chain: fallbacks may have set more than one.
        acted = False
        for index, method in enumerate(target.methods):
            m_start = time.monotonic()
            attempt = {"index": index, "type": method.type, "action": None, "error": None}
            try:
                flag = method.read_flag(deadline)
                if flag is False:
                    attempt["action"] = "not set"
                else:
                    attempt["action"] = method.resume(deadline)
                    acted = True
            except TradeopsError as err:
                attempt["error"] = str(err)
            attempt["latency_ms"] = _now_ms(m_start)
            result["methods_tried"].append(attempt)
        result["changed"] = acted
        errors = [a for a in result["methods_tried"] if a["error"]]
        if self.verify:
            verifiers = [target.verify_for(m) for m in target.methods if target.verify_for(m) is not None]
            try:
                if verifiers:
                    ok, value = verifiers[0].wait_for(False, deadline)
                    result.update(verified=ok, verified_by="status", detail="%s=%r" % (verifiers[0].field, value))
                else:
                    ok = not errors and all(m.read_flag(deadline) is False for m in target.methods)
                    result.update(verified=ok, verified_by="flag")
            except TradeopsError as err:
                errors.append({"type": "verify", "error": str(err)})
        if result["verified"] or (not self.verify and not errors):
            result["status"] = "resumed"
            result["resumed_at"] = time.time()
        else:
            result["status"] = "unverified" if acted else "failed"
            result["error"] = "; ".join("%s: %s" % (a["type"], a["error"]) for a in errors) or \
                "trading did not come back (%s)" % result.get("detail")
        result["latency_ms"] = _now_ms(start)
        return result

    def _on_error(self, target, elapsed, exc):
        if exc is not None:
            error = "internal error: %s: %s" % (type(exc).__name__, exc)
        else:
            error = "no answer within the %.1fs deadline (abandoned after %.1fs)" % (self.timeout, elapsed)
        return {"name": target.name, "status": "failed", "changed": False, "verified": False, "method": None,
                "verified_by": None, "methods_tried": [], "error": error, "before": "unknown",
                "latency_ms": int((elapsed or 0) * 1000)}

    # -- all targets ------------------------------------------------------------------------
    def _halt_in_two_passes(self):
        """Every target halted and verified by its first working method, then every halt made durable.

        Pass 1 runs each target's :meth:`_halt_steps` until it pauses (halted) or ends; pass 2 resumes the paused
        ones, each with what was left of its own deadline, to apply the rest of its chain. A target whose second
        pass fails or is abandoned keeps its verified halt from the first, with the error, and no durable hold
        (so ``not_durable`` names it).
        """
        def first(target, deadline):
            steps = self._halt_steps(target, deadline)
            try:
                result, left = next(steps)
            except StopIteration as stop:
                return stop.value
            finally:
                # done, or halted and paused until every target is: no connection is held meanwhile
                target.close()
            return _Paused(target, steps, result, left)

        results = fan_out(self.targets, first, self.concurrency, self.timeout, self._on_error)
        paused = [(i, r) for i, r in enumerate(results) if isinstance(r, _Paused)]

        def rest(item, deadline):
            p = item[1]
            try:
                p.steps.send(Deadline(p.left))
            except StopIteration as stop:
                return stop.value
            finally:
                p.target.close()
            raise RuntimeError("the halt of %s paused twice" % p.target.name)

        def rest_failed(item, elapsed, exc):
            p = item[1]
            kept = dict(p.result, methods_tried=list(p.result["methods_tried"]))
            kept["error"] = ("halted, but the rest of its chain (the durable methods) %s"
                             % ("failed: %s: %s" % (type(exc).__name__, exc) if exc is not None
                                else "got no answer within the deadline"))
            return kept

        second = fan_out(paused, rest, self.concurrency, self.timeout, rest_failed)
        for k, result in enumerate(second):
            results[paused[k][0]] = result
        return results

    def run(self):
        started = time.monotonic()
        one = self._halt_one if self.state == HALTED else self._resume_one

        def work(target, deadline):
            try:
                return one(target, deadline)
            finally:
                target.close()

        if not self.targets:
            results = []
        elif self.state == HALTED and self.apply_all and not self.check_mode:
            results = self._halt_in_two_passes()
        else:
            results = fan_out(self.targets, work, self.concurrency, self.timeout, self._on_error)
        for bad in self.invalid:
            results.insert(min(bad.index, len(results)), {
                "name": bad.name, "status": "failed", "changed": False, "verified": False, "method": None,
                "verified_by": None, "methods_tried": [], "before": "unknown", "latency_ms": 0,
                "error": "invalid input: %s" % bad.error})
        by_status = {}
        for r in results:
            by_status.setdefault(r["status"], []).append(r["name"])
        if self.state == HALTED:
            done_key, already_key, would_key = "halted", "already_halted", "would_halt"
        else:
            done_key, already_key, would_key = "resumed", "already_resumed", "would_resume"
        out = {
            "changed": any(r["changed"] for r in results),
            "state": self.state,
            "targets": results,
            done_key: by_status.get(done_key, []),
            already_key: by_status.get(already_key, []),
            # `failed` is reserved by Ansible for the task status, hence `failed_targets`.
            "failed_targets": by_status.get("failed", []),
            "unverified": by_status.get("unverified", []),
            "elapsed_ms": _now_ms(started),
        }
        if self.check_mode:
            out[would_key] = by_status.get(would_key, [])
        if self.state == HALTED and not self.check_mode:
            # Halted targets whose halt would lapse: by expiry, or by a restart of the engine.
            out["not_durable"] = [r["name"] for r in results
                                  if r["status"] in ("halted", "already_halted") and not r.get("durable")]
        after = HALTED if self.state == HALTED else "trading"
        out["diff"] = {
            "before": dict((r["name"], r.get("before", "unknown")) for r in results),
            "after": dict((r["name"], after if r["status"] in (done_key, already_key, would_key)
                           else r.get("before", "unknown")) for r in results),
        }
        return out

    @staticmethod
    def failure_message(out, verify=True):
        """A message naming every target that is not verified, and what each method returned.

        With ``verify`` off, an unverified target is what the caller asked for, not a failure.
        """
        bad_statuses = ("failed", "unverified") if verify else ("failed",)
        bad = [r for r in out["targets"] if r["status"] in bad_statuses]
        if not bad:
            return None
        verb = "halt" if out["state"] == HALTED else "resume"
        parts = []
        for r in bad:
            parts.append("%s [%s]: %s" % (r["name"], r["status"], r.get("error") or "unknown error"))
        hint = ("Trading may still be running on them: halt them by another path (the runbook's "
                "manual steps) and re-run." if verb == "halt" else
                "They are still halted or in an unknown state: check them and re-run.")
        return "could not verify the %s of %d of %d targets: %s. %s" % (
            verb, len(bad), len(out["targets"]), "; ".join(parts), hint)
