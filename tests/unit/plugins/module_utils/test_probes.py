"""ProbeService and every probe type against real things where they can run here.

- http, metric and tcp: local servers that answer, hang or refuse; the lab-backed cases (real engines with
  real faults, the lab's PostgreSQL and Redis) are in tests/integration/test_probes_lab.py;
- postgres: a closed port (bounded, password-free errors);
- disk, memory and load: this machine, with thresholds that force GO and NO-GO;
- kubernetes: a FAKE of the Kubernetes API (k8s_fake.py), because no real API server can run here;
- docker: a real daemon at the default socket, running a container of the drill base image
  (tradeops/base, built by scripts/images.sh; the test FAILS when no daemon answers: `make setup`
  starts dockerd); the "daemon unreachable" path is always tested, and the running / healthy
  logic is tested against a FAKE Docker Engine API on a unix socket, speaking the wire format the
  docker SDK uses;
- wait_for / stable_for: local HTTP servers that flip or flap on a schedule. Timings are asserted:
  the service returns as soon as the condition holds, never sleeping out its deadline.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import socketserver
import threading
import time
from urllib.parse import urlparse

import pytest
import yaml
from ansible_collections.tradeops.remediation.plugins.doc_fragments.postgres import ModuleDocFragment
from ansible_collections.tradeops.remediation.plugins.module_utils import _postgres
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._probes import (
    GO,
    NOGO,
    WARN,
    ProbeService,
    PrometheusParseError,
    parse_prometheus,
)

from tests.helpers.http import JsonHandler, LocalServer, hung_listener
from tests.unit.plugins.module_utils.k8s_fake import FakeKubernetes

# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


def run(probes, **kw):
    return ProbeService(probes, **kw).run()


def one(probe, **kw):
    """Run a single probe; return (overall result, the probe's result)."""
    out = run([probe], **kw)
    return out, out["probes"][0]


def timed(probes, **kw):
    started = time.monotonic()
    out = run(probes, **kw)
    return out, time.monotonic() - started


class ScriptedServer:
    """A local HTTP server whose answer to GET /health is ``healthy(t)`` (t = seconds since start).

    GO answers 200 {"status": "GO"}, NO-GO answers 503. Every answer is recorded. ``body`` and
    ``status`` override everything, for serving arbitrary pages (a /metrics text, an error page).
    """

    def __init__(self, healthy=lambda t: True):
        self.healthy = healthy
        self.body = None
        self.status = 200
        self.content_type = "application/json"
        self.answers = []
        self.headers_seen = []
        self.t0 = time.monotonic()
        server = self

        class Handler(JsonHandler):
            def do_GET(self):
                server.headers_seen.append(dict(self.headers))
                if server.body is not None:
                    data, code, ctype = server.body, server.status, server.content_type
                    if callable(data):
                        data = data(self)
                else:
                    go = server.healthy(time.monotonic() - server.t0)
                    code, ctype = (200 if go else 503), "application/json"
                    data = json.dumps({"status": "GO" if go else "NO-GO"})
                server.answers.append(code)
                self.reply(code, data, content_type=ctype)

        self.server = LocalServer(Handler)
        self.url = self.server.url

    def close(self):
        self.server.close()


@pytest.fixture
def scripted():
    servers = []

    def factory(healthy=lambda t: True):
        s = ScriptedServer(healthy)
        servers.append(s)
        return s

    yield factory
    for s in servers:
        s.close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------------------------
# http, tcp, metric against the lab's engines
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The Prometheus text format
# --------------------------------------------------------------------------------------------
EXPOSITION = r"""# HELP weird A metric with awkward labels.
# TYPE weird gauge
weird{path="C:\\data\\",quote="say \"GO\"",nl="a\nb",} 7 1700000000000
weird{path="/srv",quote="",nl=""} -3.5e-1
latency_bucket{le="0.5"} 10
latency_bucket{le="+Inf"} 12
latency_bucket{le="1.0"} 11
inf_gauge +Inf
nan_gauge NaN
"""
EXPOSITION += "   spaced_metric   42 \t \n"  # leading and trailing blanks
EXPOSITION += r"""{"dotted.name", "label.with.dots"="x"} 1 # {trace_id="abc"} 0.5
# EOF
"""


def test_prometheus_parser_handles_comments_escapes_special_values_and_utf8_names():
    samples = list(parse_prometheus(EXPOSITION))
    assert samples[0] == ("weird", {"path": "C:\\data\\", "quote": 'say "GO"', "nl": "a\nb"}, 7.0)
    assert samples[1] == ("weird", {"path": "/srv", "quote": "", "nl": ""}, -0.35)
    assert samples[5][0] == "inf_gauge" and samples[5][2] == math.inf
    assert samples[6][0] == "nan_gauge" and math.isnan(samples[6][2])
    assert samples[7] == ("spaced_metric", {}, 42.0)
    assert samples[8] == ("dotted.name", {"label.with.dots": "x"}, 1.0)
    assert len(samples) == 9


@pytest.mark.parametrize("line", ['x{a="b} 1', "x{a=b} 1", "x", 'x{a="1"}', "x 1 2 3", "x-1", '{a="b"} 1',
                                  'x{a="1",a="2"} 1', "x abc"])
def test_prometheus_parser_rejects_malformed_lines_naming_the_line(line):
    with pytest.raises(PrometheusParseError, match=r"^line 2: "):
        list(parse_prometheus("# ok\n" + line + "\n"))


def test_metric_probe_labels_escapes_thresholds_and_special_values(scripted):
    srv = scripted()
    srv.body, srv.content_type = EXPOSITION, "text/plain; version=0.0.4"
    url = srv.url + "/metrics"
    out = run([
        {"name": "escaped", "type": "metric", "url": url, "metric": "weird",
         "labels": {"quote": 'say "GO"', "path": "C:\\data\\"}, "min": 7, "max": 7},
        {"name": "numeric-le", "type": "metric", "url": url, "metric": "latency_bucket", "labels": {"le": 1},
         "min": 11, "max": 11},
        {"name": "inf-le", "type": "metric", "url": url, "metric": "latency_bucket", "labels": {"le": "+Inf"},
         "max": 11},
        {"name": "inf", "type": "metric", "url": url, "metric": "inf_gauge", "min": 0},
        {"name": "nan", "type": "metric", "url": url, "metric": "nan_gauge", "min": -1e300, "max": 1e300},
        {"name": "negative", "type": "metric", "url": url, "metric": "weird", "labels": {"path": "/srv"},
         "max": 0},
    ])
    by = {r["name"]: r for r in out["probes"]}
    assert by["escaped"]["status"] == GO and by["escaped"]["value"] == 7.0, by["escaped"]
    assert by["numeric-le"]["status"] == GO, by["numeric-le"]
    assert by["inf-le"]["status"] == NOGO and by["inf-le"]["value"] == 12.0
    assert by["inf"]["status"] == GO and by["inf"]["value"] == "+Inf"
    assert by["nan"]["status"] == NOGO and by["nan"]["value"] == "NaN" and "not a number" in by["nan"]["message"]
    assert by["negative"]["status"] == GO and by["negative"]["value"] == -0.35
    json.dumps(out, allow_nan=False)  # +Inf / NaN never reach the JSON as bare floats

    srv.body = "ok 1\nbroken{ 2\n"
    r = one({"name": "garbage", "type": "metric", "url": url, "metric": "ok", "max": 1})[1]
    assert r["status"] == NOGO and "not a Prometheus text exposition: line 2" in r["message"]


# --------------------------------------------------------------------------------------------
# postgres and redis against the lab's real servers
# --------------------------------------------------------------------------------------------


def test_postgres_probe_nogo_on_a_closed_port_is_fast():
    out, elapsed = timed([{"name": "pg", "type": "postgres", "login_host": "127.0.0.1",
                           "login_port": closed_port(), "login_password": "x-canary-pw"}])
    assert out["probes"][0]["status"] == NOGO and "refused" in out["probes"][0]["message"].lower()
    assert "x-canary-pw" not in json.dumps(out)
    assert elapsed < 1.0


# --------------------------------------------------------------------------------------------
# disk, memory, load against this machine
# --------------------------------------------------------------------------------------------
def test_disk_probe_against_this_machine(tmp_path):
    usage = shutil.disk_usage(tmp_path)
    out = run([
        {"name": "roomy", "type": "disk", "path": str(tmp_path), "min_free_bytes": 1, "min_free_percent": 0.001},
        {"name": "bytes", "type": "disk", "path": str(tmp_path), "min_free_bytes": usage.total * 2},
        {"name": "percent", "type": "disk", "path": str(tmp_path), "min_free_percent": 100},
        {"name": "human", "type": "disk", "path": str(tmp_path), "min_free_bytes": "1K"},
        {"name": "gone", "type": "disk", "path": str(tmp_path / "no" / "such"), "min_free_bytes": 1},
    ])
    by = {r["name"]: r for r in out["probes"]}
    assert by["roomy"]["status"] == GO and by["human"]["status"] == GO
    free = by["roomy"]["value"]["free_bytes"]
    assert abs(free - usage.free) < 256 * 1024 * 1024, (free, usage.free)
    assert 0 < by["roomy"]["value"]["free_percent"] <= 100
    assert by["bytes"]["status"] == NOGO and "below min_free_bytes" in by["bytes"]["message"]
    assert by["percent"]["status"] == NOGO and "below min_free_percent 100" in by["percent"]["message"]
    assert by["gone"]["status"] == NOGO and "No such file" in by["gone"]["message"]


def test_memory_probe_against_this_machine():
    info = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, rest = line.split(":", 1)
            info[key] = int(rest.split()[0])
    expected = 100.0 * (info["MemTotal"] - info["MemAvailable"]) / info["MemTotal"]
    out = run([{"name": "ok", "type": "memory", "max_used_percent": 100},
               {"name": "tight", "type": "memory", "max_used_percent": 0}])
    ok, tight = out["probes"]
    assert ok["status"] == GO and abs(ok["value"] - expected) < 5, (ok, expected)
    assert tight["status"] == NOGO and "above max_used_percent 0" in tight["message"]


def test_load_probe_against_this_machine_and_severity_warning():
    out = run([{"name": "ok", "type": "load", "max_load_per_cpu": 1000},
               {"name": "cpu", "type": "load", "max_load_per_cpu": 0, "severity": "warning"}])
    ok, cpu = out["probes"]
    expected = os.getloadavg()[0] / os.cpu_count()
    assert ok["status"] == GO and abs(ok["value"] - expected) < 0.5
    # a failing warning probe is WARN and does not make the whole NO-GO
    assert out["status"] == GO and out["nogo"] == []
    if cpu["value"] == 0:
        pytest.skip("the 1-minute load average is exactly 0 here, so no threshold can be exceeded")
    assert cpu["status"] == WARN and out["warning_probes"] == ["cpu"]
    assert "above max_load_per_cpu 0" in cpu["message"]


# --------------------------------------------------------------------------------------------
# kubernetes (FAKE API) and docker (FAKE API, unreachable daemon, real daemon when present)
# --------------------------------------------------------------------------------------------
def test_kubernetes_probe_against_a_fake_api():
    """FAKE Kubernetes API (no real API server can run here): see k8s_fake.py."""
    fake = FakeKubernetes()
    fake.add("engine", replicas=3)
    fake.add("degraded", replicas=3, ready=1)
    fake.add("halted", replicas=0)
    try:
        base = {"type": "kubernetes", "namespace": "trading", "api_url": fake.url, "api_key": "k8s-token-canary"}
        out = run([
            dict(base, name="all-ready", deployment="engine"),
            dict(base, name="degraded", deployment="degraded"),
            dict(base, name="degraded-ok", deployment="degraded", min_ready=1),
            dict(base, name="halted", deployment="halted"),
            dict(base, name="halted-ok", deployment="halted", min_ready=0),
            dict(base, name="missing", deployment="nope"),
        ])
        by = {r["name"]: r for r in out["probes"]}
        assert by["all-ready"]["status"] == GO and by["all-ready"]["value"] == 3
        assert "3 of 3 replicas ready" in by["all-ready"]["message"]
        assert by["degraded"]["status"] == NOGO and by["degraded"]["value"] == 1
        assert by["degraded-ok"]["status"] == GO
        assert by["halted"]["status"] == NOGO and "scaled to 0" in by["halted"]["message"]
        assert by["halted-ok"]["status"] == GO
        assert by["missing"]["status"] == NOGO and "HTTP 404" in by["missing"]["message"]
        assert set(fake.authorizations) == {"Bearer k8s-token-canary"}
        assert "k8s-token-canary" not in json.dumps(out)
        # pods becoming ready turn it GO
        fake.set_ready("degraded", 3)
        assert one(dict(base, name="degraded", deployment="degraded"))[1]["status"] == GO
    finally:
        fake.close()


class FakeDocker:
    """A FAKE Docker Engine API on a unix socket: GET /version and GET /containers/{id}/json."""

    def __init__(self, path):
        self.containers = {}
        fake = self

        class Handler(JsonHandler):
            def address_string(self):
                return "unix"

            def do_GET(self):
                path = urlparse(self.path).path
                if re.match(r"^(/v[\d.]+)?/version$", path):
                    return self.reply(200, {"ApiVersion": "1.43", "MinAPIVersion": "1.24", "Version": "24.0.0"})
                m = re.match(r"^(?:/v[\d.]+)?/containers/([^/]+)/json$", path)
                if m and m.group(1) in fake.containers:
                    return self.reply(200, {"Id": "f" * 64, "Name": "/" + m.group(1),
                                             "State": fake.containers[m.group(1)]})
                self.reply(404, {"message": "No such container: %s" % (m.group(1) if m else path)})

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(path), Handler)
        self.url = "unix://" + str(path)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_docker_probe_running_and_health_against_a_fake_docker_api(tmp_path):
    """FAKE Docker Engine API (no Docker daemon runs on this machine): the docker SDK's wire format."""
    fake = FakeDocker(tmp_path / "docker.sock")
    fake.containers.update({
        "plain": {"Status": "running", "Running": True},
        "healthy": {"Status": "running", "Running": True, "Health": {"Status": "healthy"}},
        "starting": {"Status": "running", "Running": True, "Health": {"Status": "starting", "Log": []}},
        "unhealthy": {"Status": "running", "Running": True, "Health": {
            "Status": "unhealthy", "Log": [{"ExitCode": 1, "Output": "curl: (7) Failed to connect\n"}]}},
        "exited": {"Status": "exited", "Running": False, "ExitCode": 137},
    })
    try:
        names = ["plain", "healthy", "starting", "unhealthy", "exited", "missing"]
        out = run([{"name": n, "type": "docker", "container": n, "docker_host": fake.url, "component": n}
                   for n in names])
        by = {r["name"]: r for r in out["probes"]}
        assert by["plain"]["status"] == GO and by["plain"]["value"] == {"status": "running", "health": None}
        assert by["healthy"]["status"] == GO and "running and healthy" in by["healthy"]["message"]
        assert by["starting"]["status"] == NOGO and "running but starting" in by["starting"]["message"]
        assert by["unhealthy"]["status"] == NOGO and "Failed to connect" in by["unhealthy"]["message"]
        assert by["exited"]["status"] == NOGO and "exited (exit code 137)" in by["exited"]["message"]
        assert by["missing"]["status"] == NOGO and "no container named missing" in by["missing"]["message"]
        assert out["nogo_components"] == ["exited", "missing", "starting", "unhealthy"]
    finally:
        fake.close()


def test_docker_probe_daemon_unreachable_is_nogo(tmp_path):
    """Always runnable: a Docker socket that does not exist is a NO-GO that says what to check."""
    out, elapsed = timed([{"name": "engine", "type": "docker", "container": "engine",
                           "docker_host": "unix://" + str(tmp_path / "no-docker.sock")}])
    r = out["probes"][0]
    assert r["status"] == NOGO and "cannot reach the Docker daemon" in r["message"], r
    assert "is dockerd running" in r["message"]
    assert elapsed < 3


def test_docker_probe_against_a_real_container(drill_images):
    import docker

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=30)
    name = f"tradeops-probe-test-{os.getpid()}"
    try:
        client.containers.get(name).remove(force=True)  # a leftover of an interrupted run
    except docker.errors.NotFound:
        pass
    container = client.containers.run(drill_images["base"], ["sleep", "60"], detach=True, name=name)
    try:
        probe = {"name": "c", "type": "docker", "container": name}
        assert one(probe)[1]["status"] == GO
        container.stop(timeout=1)
        r = one(probe)[1]
        assert r["status"] == NOGO and "exited" in r["message"]
    finally:
        container.remove(force=True)


# --------------------------------------------------------------------------------------------
# Concurrency and deadlines
# --------------------------------------------------------------------------------------------
def test_many_hung_probes_run_concurrently_each_within_its_timeout():
    hung = [hung_listener() for _ in range(40)]
    try:
        probes = [{"name": f"hung-{i}", "type": "http", "url": f"http://127.0.0.1:{s.getsockname()[1]}/",
                   "timeout": 0.5} for i, s in enumerate(hung)]
        out, elapsed = timed(probes, concurrency=32)
        assert out["nogo"] == [p["name"] for p in probes]
        assert all("no answer within 0.5s" in r["message"] for r in out["probes"])
        assert elapsed < 1.6, elapsed  # two waves of 0.5 s (40 probes, 32 at once), never 40 x 0.5 s
        for p in probes[:3]:
            p["timeout"] = 0.4
        out, elapsed = timed(probes[:3], concurrency=1)
        assert 1.2 <= elapsed < 1.7, elapsed  # concurrency is honoured: one at a time
    finally:
        for s in hung:
            s.close()


def test_wait_for_deadline_bounds_even_a_hung_probe():
    hung = hung_listener()
    try:
        out, elapsed = timed([{"name": "hung", "type": "http", "url": f"http://127.0.0.1:{hung.getsockname()[1]}/",
                               "timeout": 5}], wait_for=1.0, interval=0.2)
        assert out["status"] == NOGO and out["attempts"] == 1
        assert elapsed < 1.0 + 0.4, elapsed
    finally:
        hung.close()


# --------------------------------------------------------------------------------------------
# wait_for and stable_for
# --------------------------------------------------------------------------------------------
def test_wait_for_returns_as_soon_as_the_probe_turns_go(scripted):
    srv = scripted(healthy=lambda t: t >= 1.0)
    out, elapsed = timed([{"name": "flip", "type": "http", "url": srv.url + "/health"}], wait_for=10, interval=0.1)
    assert out["status"] == GO, out
    assert 1.0 <= elapsed < 1.6, elapsed  # well under the 10 s deadline
    assert out["attempts"] >= 5 and srv.answers[0] == 503 and srv.answers[-1] == 200


def test_wait_for_gives_up_at_the_deadline_with_the_last_results(scripted):
    srv = scripted(healthy=lambda t: False)
    out, elapsed = timed([{"name": "never", "type": "http", "url": srv.url + "/health", "component": "svc"}],
                         wait_for=1.2, interval=0.25)
    assert out["status"] == NOGO and out["nogo_components"] == ["svc"]
    assert 0.9 <= elapsed < 1.2 + 0.3, elapsed
    assert out["attempts"] >= 4
    assert "expected 200" in out["probes"][0]["message"] and "wait_for deadline" in out["msg"]


def test_stable_for_requires_continuous_go_and_returns_once_it_holds(scripted):
    srv = scripted(healthy=lambda t: True)
    out, elapsed = timed([{"name": "steady", "type": "http", "url": srv.url + "/health"}],
                         wait_for=5, stable_for=1.0, interval=0.2)
    assert out["status"] == GO, out
    assert out["stable_seconds"] >= 1.0
    assert 1.0 <= elapsed < 1.5, elapsed
    assert out["attempts"] >= 6


def test_a_flapping_probe_never_passes_stable_for(scripted):
    srv = scripted(healthy=lambda t: int(t / 0.3) % 2 == 0)  # GO 0.3 s, NO-GO 0.3 s, ...
    out, elapsed = timed([{"name": "flappy", "type": "http", "url": srv.url + "/health"}],
                         wait_for=2.5, stable_for=1.0, interval=0.1)
    assert out["status"] == NOGO, out
    assert 200 in srv.answers and 503 in srv.answers  # it really was GO now and then
    assert elapsed < 2.5 + 0.3, elapsed
    assert out["stable_seconds"] < 1.0


def test_stable_for_without_wait_for_stops_at_the_first_nogo(scripted):
    srv = scripted(healthy=lambda t: t < 0.5)
    out, elapsed = timed([{"name": "fading", "type": "http", "url": srv.url + "/health"}],
                         stable_for=3, interval=0.1)
    assert out["status"] == NOGO and out["nogo"] == ["fading"]
    assert 0.5 <= elapsed < 1.0, elapsed


# --------------------------------------------------------------------------------------------
# Validation, secrets, the shared postgres options
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("probe, needle", [
    ({"type": "http"}, "probes[1] (p): url is required for the http probe"),
    ({"type": "http", "url": "ftp://x"}, "probes[1] (p): url must start with http:// or https://"),
    ({"type": "http", "url": "http://x", "method": "POST"}, "probes[1] (p): method must be one of GET, HEAD"),
    ({"type": "http", "url": "http://x", "field": "a"}, "probes[1] (p): value is required with field 'a'"),
    ({"type": "tcp", "host": "x"}, "probes[1] (p): port is required for the tcp probe"),
    ({"type": "tcp", "host": "x", "port": 70000}, "probes[1] (p): port must be at most 65535"),
    ({"type": "disk", "path": "/"}, "probes[1] (p): min_free_bytes or min_free_percent is required"),
    ({"type": "disk", "path": "tmp", "min_free_bytes": 1}, "probes[1] (p): path must be absolute"),
    ({"type": "disk", "path": "/", "max_used_percent": 5}, "probes[1] (p): max_used_percent does not apply to "
                                                           "the disk probe (it is an option of the memory probe)"),
    ({"type": "metric", "url": "http://x", "metric": "m", "min": 2, "max": 1}, "probes[1] (p): min (2) is greater"),
    ({"type": "postgres", "sslmode": "maybe"}, "probes[1] (p): sslmode must be one of disable"),
    ({"type": "memory", "max_used_percent": 101}, "probes[1] (p): max_used_percent must be at most 100"),
    ({"type": "load", "max_load_per_cpu": 1, "severity": "fatal"}, "probes[1] (p): severity must be critical or"),
    ({"type": "load", "max_load_per_cpu": 1, "timeout": 0}, "probes[1] (p): timeout must be greater than 0"),
    ({"type": "carrier-pigeon"}, "probes[1] (p): type 'carrier-pigeon' is unknown"),
    ({"name": "ok"}, "probes[1] (ok): duplicate name; probes[0] has it too"),
    ({"name": None, "type": "load"}, "probes[1]: name is required"),
])
def test_invalid_probes_raise_before_anything_runs(probe, needle):
    spec = {"name": "p"}
    spec.update(probe)
    with pytest.raises(ValidationError) as err:
        ProbeService([{"name": "ok", "type": "load", "max_load_per_cpu": 1}, spec])
    assert needle in str(err.value), str(err.value)


def test_every_invalid_probe_is_named_at_once():
    with pytest.raises(ValidationError) as err:
        ProbeService([{"name": "a", "type": "http"}, {"name": "b", "type": "tcp", "host": "h"}])
    assert "probes[0] (a): url is required" in str(err.value) and "probes[1] (b): port is required" in str(err.value)


@pytest.mark.parametrize("kw, needle", [
    ({"wait_for": -1}, "wait_for must be at least 0"),
    ({"interval": 0}, "interval must be greater than 0"),
    ({"concurrency": 0}, "concurrency must be at least 1"),
    ({"wait_for": 2, "stable_for": 5}, "stable_for (5 s) cannot be reached within wait_for (2 s)"),
])
def test_invalid_global_options(kw, needle):
    with pytest.raises(ValidationError, match=re.escape(needle)):
        ProbeService([{"name": "l", "type": "load", "max_load_per_cpu": 1}], **kw)


def test_a_token_echoed_by_the_server_never_reaches_messages_or_values(scripted):
    srv = scripted()
    srv.status = 401
    srv.body = lambda handler: json.dumps({"error": "bad token " + (handler.headers.get("X-Admin-Token") or "")})
    out = run([{"name": "admin", "type": "http", "url": srv.url + "/admin", "token": "tok-canary-55aa"}])
    assert srv.headers_seen[0]["X-Admin-Token"] == "tok-canary-55aa"  # it was sent
    r = out["probes"][0]
    assert r["status"] == NOGO and "HTTP 401" in r["message"] and "bad token ********" in r["message"], r
    assert "tok-canary-55aa" not in json.dumps(out)


def test_postgres_doc_fragment_matches_the_shared_argspec():
    doc = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    spec = _postgres.postgres_connection_spec()
    assert set(doc) == set(spec)
    for name, option in spec.items():
        assert doc[name]["type"] == option["type"], name
        assert doc[name].get("default") == option.get("default"), name
        assert doc[name].get("choices") == option.get("choices"), name
    assert spec["login_password"]["no_log"] is True
    # inside probes: the same options without defaults, validated and defaulted by connect()
    inner = _postgres.probe_connection_spec()
    assert set(inner) == set(spec) and not any("default" in o or "choices" in o for o in inner.values())
    assert all(inner[n]["type"] == spec[n]["type"] and inner[n].get("no_log") == spec[n].get("no_log") for n in spec)
    kwargs = _postgres.connection_kwargs({"login_host": "db", "login_password": "pw"})
    assert kwargs["port"] == 5432 and kwargs["sslmode"] == "prefer" and kwargs["connect_timeout"] == 5


def test_postgres_connect_is_bounded_by_the_deadline_and_hides_the_password():
    from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import Deadline

    kwargs = _postgres.connection_kwargs({"connect_timeout": 30}, Deadline(2.2))
    assert kwargs["connect_timeout"] == 3  # the deadline, rounded up to whole seconds
    hung = hung_listener()
    try:
        started = time.monotonic()
        with pytest.raises(Exception) as err:
            _postgres.connect({"login_host": "127.0.0.1", "login_port": hung.getsockname()[1],
                               "login_password": "pw-canary-hung", "connect_timeout": 2, "sslmode": "disable"})
        assert time.monotonic() - started < 3.5
        assert "timeout" in str(err.value).lower() and "pw-canary-hung" not in str(err.value)
    finally:
        hung.close()


@pytest.mark.parametrize("probe, service, needle", [
    ({"timeout": float("inf")}, {}, "probes[0] (p): timeout must be a finite number, got inf"),
    ({"timeout": float("nan")}, {}, "probes[0] (p): timeout must be a finite number, got nan"),
    ({"timeout": 1e9}, {}, "probes[0] (p): timeout must be at most 86400.0, got 1000000000.0"),
    ({}, {"wait_for": float("inf")}, "wait_for must be a finite number, got inf"),
    ({}, {"interval": 1e9}, "interval must be at most 86400.0"),
    ({"url": "http://[::1"}, {}, "probes[0] (p): url is not a valid URL"),
])
def test_timeouts_are_finite_and_bounded_and_urls_parse(probe, service, needle):
    spec = dict({"name": "p", "type": "http", "url": "http://127.0.0.1:9/health"}, **probe)
    with pytest.raises(ValidationError, match=re.escape(needle)):
        ProbeService([spec], **service)


@pytest.mark.parametrize("value, needle", [
    (float("inf"), "postgres: connect_timeout: must be a finite number of seconds"),
    (float("nan"), "postgres: connect_timeout: must be a finite number of seconds"),
    (1e9, "postgres: connect_timeout: must be between 1 and 86400 seconds"),
    (-5, "postgres: connect_timeout: must be between 1 and 86400 seconds"),
])
def test_postgres_connect_timeout_is_finite_and_bounded(value, needle):
    with pytest.raises(ValidationError, match=re.escape(needle)):
        _postgres.connection_kwargs({"connect_timeout": value}, where="postgres")


# --------------------------------------------------------------------------------------------
# http capture: fields of the answer returned whatever the status (seed 004's /pnl/status)
# --------------------------------------------------------------------------------------------
def test_http_capture_returns_the_named_fields_go_or_nogo_and_masks_the_token(scripted):
    server = scripted()
    token = "tok-" + "s3cr3t-value-1234"
    server.body = json.dumps({"halted": True, "haltReason": "daily_loss_limit", "pnl": -5250.0,
                              "riskRejections": [{"qty": 0.25}], "echo": "Bearer " + token})
    probe = {"name": "e1-halt", "type": "http", "url": server.url + "/pnl/status", "field": "halted",
             "value": False, "token": token, "capture": ["haltReason", "pnl", "riskRejections.0.qty", "echo",
                                                         "missing.path"]}
    out, result = one(probe)
    assert result["status"] == "NO-GO" and result["value"] is True  # halted: the probe's own verdict
    assert result["captured"] == {"haltReason": "daily_loss_limit", "pnl": -5250.0, "riskRejections.0.qty": 0.25,
                                  "echo": "Bearer ********", "missing.path": None}
    assert token not in json.dumps(out)
    # no capture asked: no captured key; an error status: nothing captured
    _, plain = one({"name": "plain", "type": "http", "url": server.url + "/pnl/status"})
    assert "captured" not in plain
    server.status = 503
    _, failed = one(probe)
    assert failed["status"] == "NO-GO" and "captured" not in failed


@pytest.mark.parametrize("capture, words", [
    ("haltReason", "capture must be a list of dotted JSON field paths"),
    ([""], "capture must be a list of dotted JSON field paths"),
])
def test_http_capture_must_be_a_list_of_paths(capture, words):
    with pytest.raises(ValidationError, match=words):
        run([{"name": "p", "type": "http", "url": "http://127.0.0.1:9/x", "capture": capture}])


def test_http_capture_needs_a_body():
    with pytest.raises(ValidationError, match="capture needs a response body"):
        run([{"name": "p", "type": "http", "url": "http://127.0.0.1:9/x", "method": "HEAD", "capture": ["a"]}])
