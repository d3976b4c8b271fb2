"""Drive health_check's main() with patched module args (as community.hashi_vault does).

The HTTP peers are real local servers that record every request, so "check mode still probes"
and "bad input probes nothing" are asserted on what actually reached the wire.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import yaml
from ansible_collections.tradeops.remediation.plugins.modules import health_check

from tests.helpers.http import JsonHandler, LocalServer
from tests.helpers.modules import run_module as run_helper


class RecordingService:
    """GET /health answers 200 while ``healthy``, else 503. Records every request path."""

    def __init__(self):
        self.healthy = True
        self.requests = []
        service = self

        class Handler(JsonHandler):
            def do_GET(self):
                service.requests.append(("GET", self.path))
                self.reply(200 if service.healthy else 503,
                           {"trading_status": "GO" if service.healthy else "NO-GO"})

        self.server = LocalServer(Handler)
        self.url = self.server.url

    def probe(self, name="svc-api", **over):
        probe = {"name": name, "type": "http", "url": self.url + "/health", "component": "svc",
                 "field": "trading_status", "value": "GO"}
        probe.update(over)
        return probe

    def close(self):
        self.server.close()


@pytest.fixture
def service():
    s = RecordingService()
    yield s
    s.close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_module(capsys, args):
    return run_helper(health_check, capsys, args)


def test_go_result_shape(capsys, service, tmp_path):
    out = run_module(capsys, {"probes": [service.probe(),
                                         {"name": "tmp-disk", "type": "disk", "path": str(tmp_path),
                                          "min_free_bytes": "1K", "component": "host"}]})
    assert out["_rc"] == 0, out
    assert out["changed"] is False and out["status"] == "GO"
    assert [p["name"] for p in out["probes"]] == ["svc-api", "tmp-disk"]
    api = out["probes"][0]
    assert set(api) == {"name", "type", "component", "severity", "status", "value", "latency_ms", "message"}
    assert api["status"] == "GO" and api["value"] == "GO" and api["severity"] == "critical"
    assert out["nogo"] == [] and out["warning_probes"] == [] and out["nogo_components"] == []
    assert out["attempts"] == 1 and out["stable_seconds"] == 0 and out["elapsed_ms"] >= 0
    assert out["msg"].startswith("GO: 2 of 2 probes GO")


def test_check_mode_runs_the_probes_and_reports_no_change(capsys, service):
    out = run_module(capsys, {"probes": [service.probe()], "_ansible_check_mode": True, "_ansible_diff": True})
    assert out["_rc"] == 0, out
    assert out["changed"] is False and out["status"] == "GO"
    assert service.requests == [("GET", "/health")]  # the probe really ran
    assert "diff" not in out
    service.healthy = False
    out = run_module(capsys, {"probes": [service.probe()], "_ansible_check_mode": True})
    assert out["_rc"] == 0 and out["status"] == "NO-GO" and out["changed"] is False


def test_nogo_is_reported_but_does_not_fail_by_default(capsys, service):
    service.healthy = False
    out = run_module(capsys, {"probes": [service.probe()]})
    assert out["_rc"] == 0 and "failed" not in out
    assert out["status"] == "NO-GO" and out["nogo"] == ["svc-api"] and out["nogo_components"] == ["svc"]


def test_fail_on_nogo_fails_naming_every_nogo_probe(capsys, service):
    service.healthy = False
    port = closed_port()
    out = run_module(capsys, {"fail_on_nogo": True, "probes": [
        service.probe(),
        {"name": "db-port", "type": "tcp", "host": "127.0.0.1", "port": port, "component": "db"},
        {"name": "fine", "type": "disk", "path": "/", "min_free_bytes": 1},
    ]})
    assert out["_rc"] == 1 and out["failed"] is True
    msg = out["msg"]
    assert msg.startswith("health_check: NO-GO: 2 of 3 probes are NO-GO: ")
    assert f"svc-api (component svc): GET {service.url}/health answered HTTP 503" in msg
    assert f"db-port (component db): tcp 127.0.0.1:{port}:" in msg and "refused" in msg.lower()
    assert "fine" not in msg.split("NO-GO:", 2)[2]
    assert "Repair or restart the NO-GO components (db, svc)" in msg  # what to do next
    # the results still come back with the failure
    assert out["status"] == "NO-GO" and out["nogo_components"] == ["db", "svc"]
    assert [p["status"] for p in out["probes"]] == ["NO-GO", "NO-GO", "GO"]


def test_fail_on_nogo_passes_when_go(capsys, service):
    out = run_module(capsys, {"fail_on_nogo": True, "probes": [service.probe()]})
    assert out["_rc"] == 0 and out["status"] == "GO"


def test_a_failing_warning_probe_is_warn_and_an_ansible_warning(capsys, service, monkeypatch):
    # Once any test has imported controller code (an inventory plugin), ansible-core 2.19 sends a
    # module's warnings straight to the controller's display; make this process a module again.
    from ansible.module_utils import _internal

    monkeypatch.setattr(_internal, "is_controller", False, raising=False)
    out = run_module(capsys, {"fail_on_nogo": True, "probes": [
        service.probe(),
        {"name": "memory", "type": "memory", "max_used_percent": 0, "severity": "warning", "component": "host"},
    ]})
    assert out["_rc"] == 0 and out["status"] == "GO"
    assert out["probes"][1]["status"] == "WARN"
    assert out["warning_probes"] == ["memory"] and out["nogo"] == [] and out["nogo_components"] == []
    # ansible-core 2.19 returns warnings as WarningSummary dicts; older ones as strings
    assert "health_check: memory is WARN: memory:" in json.dumps(out["warnings"]), out.get("warnings")


def test_wait_for_through_the_module(capsys, service):
    service.healthy = False
    threading.Timer(0.6, lambda: setattr(service, "healthy", True)).start()
    started = time.monotonic()
    out = run_module(capsys, {"wait_for": 10, "interval": 0.1, "fail_on_nogo": True, "probes": [service.probe()]})
    assert out["_rc"] == 0 and out["status"] == "GO", out
    assert out["attempts"] > 1
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("probe, needle", [
    ({"name": "engine-003-api", "type": "http"}, "probes[1] (engine-003-api): url is required for the http probe"),
    ({"name": "x", "type": "carrier-pigeon"}, "probes[1] (x): type 'carrier-pigeon' is unknown; expected one of"),
    ({"name": "x"}, "probes[1] (x): type is required"),
    ({"name": "svc-api", "type": "load", "max_load_per_cpu": 1}, "probes[1] (svc-api): duplicate name"),
    ({"type": "load", "max_load_per_cpu": 1}, "probes[1]: name is required"),
    ({"name": "disk", "type": "disk", "path": "/"}, "probes[1] (disk): min_free_bytes or min_free_percent is "
                                                    "required for the disk probe"),
    ({"name": "disk", "type": "disk", "path": "/", "min_free_percent": 5, "port": 1},
     "probes[1] (disk): port does not apply to the disk probe (it is an option of the tcp and redis probe)"),
    ({"name": "api", "type": "http", "url": "http://x/", "method": "POST"}, "probes[1] (api): method must be one of"),
    ({"name": "m", "type": "metric", "url": "http://x/metrics", "metric": "up"},
     "probes[1] (m): min or max is required for the metric probe"),
    ({"name": "k", "type": "kubernetes"}, "probes[1] (k): deployment is required for the kubernetes probe"),
    ({"name": "pg", "type": "postgres", "sslmode": "sometimes"},
     "probes[1] (pg): sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full, got 'sometimes'"),
    ({"name": "l", "type": "load", "max_load_per_cpu": 1, "severity": "fatal"},
     "probes[1] (l): severity must be critical or warning, got 'fatal'"),
])
def test_bad_input_fails_naming_the_probe_and_option_and_probes_nothing(capsys, service, probe, needle):
    out = run_module(capsys, {"probes": [service.probe(), probe]})
    assert out["_rc"] == 1 and out["failed"] is True
    assert needle in out["msg"], out["msg"]
    assert service.requests == [], "a probe ran although the input was invalid"
    assert out["msg"].startswith("health_check: ") and out["msg"].endswith("fix the options and re-run.")


def test_bad_global_options_fail_before_any_probe(capsys, service):
    out = run_module(capsys, {"probes": [service.probe()], "wait_for": 2, "stable_for": 10})
    assert out["_rc"] == 1 and "stable_for (10 s) cannot be reached within wait_for (2 s)" in out["msg"]
    out = run_module(capsys, {"probes": [], "wait_for": 0})
    assert out["_rc"] == 1 and "probes is empty" in out["msg"]
    assert service.requests == []


def test_secrets_never_appear_in_the_output(capsys, service):
    port = closed_port()
    out = run_module(capsys, {"fail_on_nogo": True, "probes": [
        service.probe(token="tok-canary-1111"),
        {"name": "redis", "type": "redis", "port": port, "password": "redis-canary-2222"},
        {"name": "pg", "type": "postgres", "login_host": "127.0.0.1", "login_port": port,
         "login_password": "pg-canary-3333"},
        {"name": "k8s", "type": "kubernetes", "deployment": "d", "api_url": f"http://127.0.0.1:{port}",
         "api_key": "k8s-canary-4444"},
    ]})
    assert out["_rc"] == 1 and out["nogo"] == ["redis", "pg", "k8s"]
    for canary in ("tok-canary-1111", "redis-canary-2222", "pg-canary-3333", "k8s-canary-4444"):
        assert canary not in out["_raw"], canary


def _doc_options(options):
    """DOCUMENTATION options -> the argspec shape ansible-test's validate-modules compares."""
    spec = {}
    for name, doc in options.items():
        entry = {"type": doc.get("type", "str")}
        for key in ("default", "choices", "elements", "required"):
            if key in doc:
                entry[key] = doc[key]
        if "suboptions" in doc:
            entry["options"] = _doc_options(doc["suboptions"])
        spec[name] = entry
    return spec


def _argspec_shape(spec):
    shape = {}
    for name, arg in spec.items():
        entry = {k: arg[k] for k in ("type", "default", "choices", "elements", "required") if k in arg}
        if "options" in arg:
            entry["options"] = _argspec_shape(arg["options"])
        shape[name] = entry
    return shape


def test_documentation_matches_the_argument_spec():
    doc = yaml.safe_load(health_check.DOCUMENTATION)
    assert _doc_options(doc["options"]) == _argspec_shape(health_check.ARGUMENT_SPEC)
    assert doc["attributes"]["diff_mode"]["support"] == "none"
    assert doc["attributes"]["check_mode"]["support"] == "full"
    returns = yaml.safe_load(health_check.RETURN)
    assert {"status", "probes", "nogo", "warning_probes", "nogo_components", "attempts", "stable_seconds",
            "elapsed_ms", "msg", "gate_recorded", "ran_on_controller"} == set(returns)
    no_log = {n for n, o in health_check.PROBE_SPEC.items() if o.get("no_log")}
    assert no_log == {"token", "password", "login_password", "api_key"}
