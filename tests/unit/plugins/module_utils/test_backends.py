"""The backend layer without a lab: options, validation, clients and errors of each backend module.

_validate (numbers, required options, token merge, spec composition), _http (options, the client against
real local HTTP and mutual-TLS servers), _redis (against a real redis-server started here), _docker
(against the real Docker daemon, and one that is not there) and _kubernetes (against tests' fake
Kubernetes API: no real API server can run here).
"""

from __future__ import annotations

import math
import shutil
import socket
import ssl
import subprocess
import time

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils import _docker, _http, _kubernetes, _redis
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import Deadline
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import (
    compose,
    merge_token,
    number,
    require,
    whole,
)

from tests.helpers.http import JsonHandler, LocalServer
from tests.integration.lab.helpers import wait_until
from tests.unit.plugins.module_utils.k8s_fake import FakeKubernetes


# --------------------------------------------------------------------------------------------
# _validate
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, kw, needle", [
    (float("nan"), {}, "p.x must be a finite number, got nan"),
    (float("inf"), {}, "p.x must be a finite number, got inf"),
    ("inf", {}, "p.x must be a finite number, got inf"),
    (True, {}, "p.x must be a number, got True"),
    ("1.5", {"integer": True}, "p.x must be a whole number, got '1.5'"),
    (0, {"above": 0}, "p.x must be greater than 0, got 0"),
    (-1, {"minimum": 0}, "p.x must be at least 0, got -1"),
    (70000, {"integer": True, "minimum": 1, "maximum": 65535}, "p.x must be at most 65535, got 70000"),
    (70000, {"integer": True, "minimum": 1, "maximum": 65535, "between": True},
     "p.x must be between 1 and 65535, got 70000"),
])
def test_number_refuses_what_is_not_a_finite_bounded_number_naming_the_option(value, kw, needle):
    with pytest.raises(ValidationError) as err:
        number(value, "p.x", **kw)
    assert str(err.value) == needle


def test_number_and_whole_accept_and_default():
    assert number(None, "x", default=3.0) == 3.0 and number("", "x", default=1) == 1
    assert number("2.5", "x") == 2.5 and not math.isnan(number(0, "x"))
    assert whole("6379", "port", 1, 1, 65535) == 6379 and whole(None, "port", 6379, 1, 65535) == 6379


def test_require_names_the_option_path():
    with pytest.raises(ValidationError, match=r"^targets\[0\] \(e\): methods\[1\]\.url is required for the http "):
        require({"url": ""}, ("url",), "targets[0] (e): methods[1]", "the http method")
    with pytest.raises(ValidationError, match=r"^probes\[2\] \(api\): url is required"):
        require({}, ("url",), "probes[2] (api): ", "the http probe")


def test_merge_token_copies_and_puts_the_token_last():
    headers = {"X-Admin-Token": "from-headers", "Accept": "x"}
    merged = merge_token(headers, "tok", None, prefix="Bearer ")
    assert merged == {"X-Admin-Token": "Bearer tok", "Accept": "x"} and headers["X-Admin-Token"] == "from-headers"
    assert merge_token(None, 12345, "Authorization") == {"Authorization": "12345"}
    assert merge_token({"a": "b"}, None) == {"a": "b"}


def test_records_take_declared_fields_only():
    options = _redis.RedisOptions(port=6380)
    assert (options.host, options.port, options.db, options.password) == ("127.0.0.1", 6380, 0, None)
    with pytest.raises(TypeError, match="RedisOptions has no field prot"):
        _redis.RedisOptions(prot=6380)


def test_compose_refuses_one_option_defined_twice_differently():
    assert compose({"a": {"type": "str"}}, {"a": {"type": "str"}, "b": {"type": "int"}}) == {
        "a": {"type": "str"}, "b": {"type": "int"}}
    with pytest.raises(ValueError, match="option a is defined twice"):
        compose({"a": {"type": "str"}}, {"a": {"type": "int"}})


# --------------------------------------------------------------------------------------------
# _http
# --------------------------------------------------------------------------------------------
class Server:
    """A real local HTTP(S) server that records each request's path, headers and TLS peer."""

    def __init__(self, context=None, delay=0.0):
        self.seen = []
        server = self

        class Handler(JsonHandler):
            def do_GET(self):
                time.sleep(delay)
                peer = self.connection.getpeercert() if context is not None else None
                server.seen.append({"path": self.path, "headers": dict(self.headers), "peer": peer})
                self.reply(200, {"ok": True})

        self.server = LocalServer(Handler, context)
        self.port = self.server.port

    def close(self):
        self.server.close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def test_http_options_merge_the_token_and_name_the_option_path():
    options = _http.http_options({"headers": {"X-Desk": 7}, "token": "t0k", "token_header": "Authorization"},
                                 "targets[0] (e): methods[0]", prefix="Bearer ")
    assert options.headers == {"X-Desk": "7", "Authorization": "Bearer t0k"}
    assert options.validate_certs is True and options.ca_path is None
    assert _http.http_options({"validate_certs": False}).validate_certs is False
    with pytest.raises(ValidationError, match=r"^targets\[0\] \(e\): verify\.headers must be a dict"):
        _http.http_options({"headers": ["a"]}, "targets[0] (e): verify")
    needle = r"^probes\[0\] \(api\): client_key needs probes\[0\] \(api\): client_cert"
    with pytest.raises(ValidationError, match=needle):
        _http.http_options({"client_key": "/k.pem"}, "probes[0] (api): ")


def test_messages_never_carry_the_password_of_a_url():
    assert _http.safe_url("https://ops:s3cr3t@host:8443/x?y=1") == "https://ops:********@host:8443/x?y=1"
    with pytest.raises(ValidationError) as err:
        _http.check_url("ftp://ops:s3cr3t@host/", "test.url")
    assert "s3cr3t" not in str(err.value)
    client = _http.client(_http.HttpOptions())
    with pytest.raises(BackendError) as err:
        client.request("http://ops:s3cr3t@127.0.0.1:1/", timeout=1)
    assert "s3cr3t" not in str(err.value) and "127.0.0.1:1" in str(err.value)


def test_client_sends_the_options_headers_and_is_bounded_by_the_deadline(server):
    client = _http.client(_http.http_options({"token": "tok-1"}))
    resp = client.request(f"http://127.0.0.1:{server.port}/status", deadline=Deadline(5))
    assert resp.status == 200 and resp.json() == {"ok": True}
    assert server.seen[0]["headers"]["X-Admin-Token"] == "tok-1"
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        started = time.monotonic()
        with pytest.raises(BackendError, match="no answer within"):
            client.request(f"http://127.0.0.1:{hung.getsockname()[1]}/", deadline=Deadline(0.4))
        assert time.monotonic() - started < 1.5
    finally:
        hung.close()


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is required (Debian's openssl package; scripts/setup.sh installs it)")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=tradeops test CA", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=tradeops-client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subject, cwd=d)
        extra = ["-extfile", "server.ext"] if name == "server" else []
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", *extra, cwd=d)
    return d


@pytest.fixture
def mtls_server(pki):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    srv = Server(context)
    yield srv
    srv.close()


def test_client_cert_is_presented_to_a_server_that_requires_one(pki, mtls_server):
    url = f"https://127.0.0.1:{mtls_server.port}/"
    anonymous = _http.client(_http.http_options({"ca_path": str(pki / "ca.pem")}))
    with pytest.raises(BackendError):
        anonymous.request(url, timeout=5)
    assert mtls_server.seen == []
    options = _http.http_options({"ca_path": str(pki / "ca.pem"), "client_cert": str(pki / "client.pem"),
                                  "client_key": str(pki / "client.key")})
    resp = _http.client(options).request(url, timeout=5)
    assert resp.status == 200
    subject = dict(pair[0] for pair in mtls_server.seen[0]["peer"]["subject"])
    assert subject["commonName"] == "tradeops-client"


def test_a_server_certificate_from_another_ca_is_refused_unless_validation_is_off(pki, mtls_server):
    url = f"https://127.0.0.1:{mtls_server.port}/"
    cert = {"client_cert": str(pki / "client.pem"), "client_key": str(pki / "client.key")}
    with pytest.raises(BackendError, match="CERTIFICATE_VERIFY_FAILED"):
        _http.client(_http.http_options(cert)).request(url, timeout=5)
    assert _http.client(_http.http_options(dict(cert, validate_certs=False))).request(url, timeout=5).status == 200


def test_a_missing_certificate_file_fails_the_request_not_the_validation(tmp_path):
    options = _http.http_options({"client_cert": str(tmp_path / "absent.pem")}, "targets[0] (e): methods[0]")
    client = _http.client(options)  # building the client does not read the files
    with pytest.raises(BackendError, match="cannot load the TLS files"):
        client.request("https://127.0.0.1:1/", timeout=1)


# --------------------------------------------------------------------------------------------
# _redis
# --------------------------------------------------------------------------------------------
def test_redis_options_defaults_and_errors_name_the_option_path():
    options = _redis.redis_options({})
    assert (options.host, options.port, options.db, options.tls) == ("127.0.0.1", 6379, 0, False)
    with pytest.raises(ValidationError, match=r"^targets\[0\] \(e\): methods\[1\]\.port must be between 1 and 65535"):
        _redis.redis_options({"port": 0}, "targets[0] (e): methods[1]")
    with pytest.raises(ValidationError, match=r"^probes\[1\] \(r\): db must be at least 0"):
        _redis.redis_options({"db": -1}, "probes[1] (r): ", range_messages=False)


def test_redis_call_talks_to_a_real_server_and_hides_the_password(redis_server):
    good = _redis.redis_options({"port": redis_server, "password": "pw-canary-77"})
    assert _redis.call(good, Deadline(5), lambda c: c.ping()) is True
    assert _redis.call(good, Deadline(5), lambda c: c.set("k", "v") and c.get("k")) == b"v"
    wrong = _redis.redis_options({"port": redis_server, "password": "not-it-pw-99"})
    with pytest.raises(BackendError) as err:
        _redis.call(wrong, Deadline(5), lambda c: c.ping())
    assert f"redis 127.0.0.1:{redis_server}:" in str(err.value) and "not-it-pw-99" not in str(err.value)


def _server_connections(port):
    """(connections the server accepted so far, clients connected now), read over a connection of its own."""
    import redis
    probe = redis.Redis(port=port, password="pw-canary-77", socket_timeout=5)
    try:
        return probe.info("stats")["total_connections_received"], probe.info("clients")["connected_clients"] - 1
    finally:
        probe.close()


def test_redis_session_keeps_one_connection_until_closed_and_drops_it_after_an_error(redis_server):
    options = _redis.redis_options({"port": redis_server, "password": "pw-canary-77"})
    accepted, _ = _server_connections(redis_server)
    session = _redis.Session(options)
    assert session.call(Deadline(5), lambda c: c.set("s", "1")) is True
    assert session.call(Deadline(5), lambda c: c.get("s")) == b"1"
    assert session.call(Deadline(5), lambda c: c.exists("s")) == 1
    # three calls, one connection (the probe's own is counted too)
    assert _server_connections(redis_server)[0] - accepted == 1 + 1
    with pytest.raises(BackendError, match="WRONGTYPE") as err:
        session.call(Deadline(5), lambda c: c.lpush("s", "x"))
    assert "pw-canary-77" not in str(err.value)
    accepted, _ = _server_connections(redis_server)
    assert session.call(Deadline(5), lambda c: c.get("s")) == b"1"  # connects again
    assert _server_connections(redis_server)[0] - accepted == 1 + 1
    session.close()
    wait_until(lambda: _server_connections(redis_server)[1] == 0, what="the server saw the connection closed")
    # a spent deadline: refused before any connection is made
    with pytest.raises(BackendError, match="deadline"):
        session.call(Deadline(0), lambda c: c.ping())
    assert session._client is None


def test_a_redis_kill_switch_uses_one_connection_per_engine_and_closes_it(redis_server):
    """apply_all reads, SETs, reads back and reads the expiry of each engine's key: four calls, one connection."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    from ansible_collections.tradeops.remediation.plugins.module_utils import _killswitch

    targets = [{"name": f"engine-{i}", "methods": [{"type": "redis", "port": redis_server,
                                                      "password": "pw-canary-77", "key": f"halt:engine-{i}"}]}
               for i in range(5)]
    params = ArgumentSpecValidator(_killswitch.halt_argspec()).validate(
        {"targets": targets, "apply_all": True, "timeout": 10}).validated_parameters
    accepted, _ = _server_connections(redis_server)
    result, _warnings, failure = _killswitch.run_halt(params)
    assert failure is None, result
    assert sorted(result["halted"]) == [f"engine-{i}" for i in range(5)]
    assert all(t["verified"] and t["verified_by"] == "flag" for t in result["targets"]), result["targets"]
    assert _server_connections(redis_server)[0] - accepted == 5 + 1
    wait_until(lambda: _server_connections(redis_server)[1] == 0, what="the server saw the connection closed")
    import redis
    probe = redis.Redis(port=redis_server, password="pw-canary-77", socket_timeout=5)
    try:
        assert all(probe.get(f"halt:engine-{i}") for i in range(5))
        assert all(probe.ttl(f"halt:engine-{i}") == -1 for i in range(5))  # held until resumed: no expiry
    finally:
        probe.close()


def test_redis_call_to_a_closed_port_fails_at_once_without_retries():
    options = _redis.redis_options({"port": 1})
    started = time.monotonic()
    with pytest.raises(BackendError, match="redis 127.0.0.1:1"):
        _redis.call(options, Deadline(5), lambda c: c.ping())
    assert time.monotonic() - started < 1.0


# --------------------------------------------------------------------------------------------
# _docker
# --------------------------------------------------------------------------------------------
def test_docker_options_validate_the_container_and_the_daemon_url():
    options = _docker.docker_options({"container": "engine-001"})
    assert options.docker_host == _docker.DEFAULT_DOCKER_HOST
    with pytest.raises(ValidationError, match=r"^probes\[0\] \(c\): container is required"):
        _docker.docker_options({}, "probes[0] (c): ")
    with pytest.raises(ValidationError, match=r"^m\.docker_host must be a Docker daemon URL"):
        _docker.docker_options({"container": "c", "docker_host": "/var/run/docker.sock"}, "m")


def test_docker_call_names_a_missing_container_on_the_real_daemon():
    options = _docker.docker_options({"container": "tradeops-test-no-such-container-4711"})
    with pytest.raises(BackendError, match="no container named tradeops-test-no-such-container-4711"):
        _docker.container_call(options, Deadline(10), lambda container: container.status)


def test_docker_call_to_a_daemon_that_is_not_there_says_what_to_check(tmp_path):
    options = _docker.docker_options({"container": "c", "docker_host": f"unix://{tmp_path}/absent.sock"})
    started = time.monotonic()
    with pytest.raises(BackendError, match="cannot reach the Docker daemon|docker container c at"):
        _docker.container_call(options, Deadline(2), lambda container: container.status)
    assert time.monotonic() - started < 3


# --------------------------------------------------------------------------------------------
# _kubernetes (a fake API server: no real Kubernetes API can run here)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def k8s():
    fake = FakeKubernetes(token="k8s-token-canary")
    yield fake
    fake.close()


def test_kubernetes_options_validate_the_api_url_naming_the_option_path():
    options = _kubernetes.kubernetes_options({"api_url": "https://k8s:6443", "namespace": "trading"})
    assert options.namespace == "trading" and options.validate_certs is True
    assert _kubernetes.kubernetes_options({}).namespace == "default"
    with pytest.raises(ValidationError, match=r"^targets\[0\] \(e\): methods\[0\]\.api_url must start with http"):
        _kubernetes.kubernetes_options({"api_url": "k8s:6443"}, "targets[0] (e): methods[0]")


def test_kubernetes_call_maps_errors_to_status_and_reason_only(k8s):
    options = _kubernetes.kubernetes_options({"api_url": k8s.url, "api_key": "k8s-token-canary"})
    with pytest.raises(BackendError) as err:
        _kubernetes.call(options, Deadline(5), lambda api, t: api.read_namespaced_deployment(
            "absent", "default", _request_timeout=t), "deployment default/absent")
    assert str(err.value).startswith("deployment default/absent: HTTP 404")
    assert "k8s-token-canary" not in str(err.value)
    assert k8s.authorizations[-1] == "Bearer k8s-token-canary"

    class Gone(Exception):
        pass

    with pytest.raises(Gone):
        _kubernetes.call(options, Deadline(5), lambda api, t: api.read_namespaced_secret(
            "absent", "default", _request_timeout=t), "secret", api="core", on_status={404: lambda e: Gone()})


class ForwardProxy(Server):
    """A real local forward proxy: it receives the absolute URL, records it and fetches it (no CONNECT)."""

    def __init__(self):
        self.seen = []
        proxy = self

        class Handler(JsonHandler):
            def do_GET(self):
                proxy.seen.append(self.path)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")}
                direct = _http.client(_http.HttpOptions(headers=headers))
                resp = direct.request(self.path, timeout=5)
                self.reply(resp.status, resp.body, headers={"Via": "1.1 tradeops-test-proxy"})

        self.server = LocalServer(Handler)
        self.port = self.server.port


@pytest.fixture
def proxy():
    srv = ForwardProxy()
    yield srv
    srv.close()


def test_proxy_option_sends_every_http_user_through_the_proxy(server, proxy):
    """One option added to the HTTP backend (its argspec group and its fragment) reaches every user."""
    from ansible_collections.tradeops.remediation.plugins.module_utils._probes import ProbeService
    from ansible_collections.tradeops.remediation.plugins.modules import halt_trading, health_check, rotate_secret

    target = f"http://127.0.0.1:{server.port}/status"
    proxy_url = f"http://127.0.0.1:{proxy.port}"
    resp = _http.client(_http.http_options({"proxy": proxy_url, "token": "t"})).request(target, timeout=5)
    assert resp.status == 200 and proxy.seen == [target] and server.seen[-1]["headers"]["X-Admin-Token"] == "t"
    out = ProbeService([{"name": "api", "type": "http", "url": target, "proxy": proxy_url}]).run()
    assert out["status"] == "GO" and proxy.seen == [target, target]
    targets = halt_trading.ARGUMENT_SPEC["targets"]["options"]
    for spec in (targets["methods"]["options"], targets["verify"]["options"], health_check.PROBE_SPEC,
                 rotate_secret.TEST_SPEC, rotate_secret.REVOKE_SPEC):
        assert spec["proxy"] == {"type": "str"}
    with pytest.raises(ValidationError, match=r"^probes\[0\] \(api\): proxy must start with http"):
        _http.http_options({"proxy": "127.0.0.1:3128"}, "probes[0] (api): ")


def test_plain_http_clients_share_one_opener_per_proxy_and_never_mix_them(server, proxy):
    """A 1,000-engine halt builds 1,500 clients: they share the process's opener of their proxy, and one with a
    proxy never sends a client without one through it (or the other way round)."""
    target = f"http://127.0.0.1:{server.port}/status"
    proxy_url = f"http://127.0.0.1:{proxy.port}"
    direct = [_http.client(_http.http_options({})) for _ in range(3)]
    proxied = [_http.client(_http.http_options({"proxy": proxy_url})) for _ in range(2)]
    for client in direct + proxied + direct:
        assert client.request(target, timeout=5).status == 200
    assert proxy.seen == [target, target]
    assert _http._HTTP_OPENERS[None] is not _http._HTTP_OPENERS[proxy_url]
    assert all(not c._openers for c in direct + proxied)  # none built an opener of its own


def test_quiesce_waits_from_the_last_engine_this_call_halted_and_not_for_engines_already_halted(redis_server):
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    from ansible_collections.tradeops.remediation.plugins.module_utils import _killswitch

    targets = [{"name": f"quiet-{i}", "methods": [{"type": "redis", "port": redis_server, "password": "pw-canary-77",
                                                     "key": f"halt:quiet-{i}"}]} for i in range(3)]
    params = ArgumentSpecValidator(_killswitch.halt_argspec()).validate(
        {"targets": targets, "timeout": 10, "quiesce": 0.5}).validated_parameters
    result, _warnings, failure = _killswitch.run_halt(params)
    returned = time.time()
    assert failure is None, result
    last = max(t["halted_at"] for t in result["targets"])
    # every engine had its 0.5 s since its own verified halt before the call returned, and no more than that was waited
    assert returned >= last + 0.5 and 0 < result["quiesced_s"] <= 0.5
    again, _warnings, failure = _killswitch.run_halt(params)
    assert failure is None and sorted(again["already_halted"]) == [t["name"] for t in targets]
    assert again["quiesced_s"] == 0  # nothing was trading: nothing can be in flight
    # check mode waits for nothing and says nothing about it
    checked, _warnings, _failure = _killswitch.run_halt(params, check_mode=True)
    assert "quiesced_s" not in checked


def test_a_deferred_quiesce_returns_at_once_with_the_time_it_ends(redis_server):
    """quiesce_wait=false (the P0 contain phase): the call returns right after the verified halt, with the end of the
    quiesce counted from the last engine's halt; the caller waits for it (the venue is cancelled meanwhile)."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    from ansible_collections.tradeops.remediation.plugins.module_utils import _killswitch

    targets = [{"name": f"deferred-{i}", "methods": [{"type": "redis", "port": redis_server, "password": "pw-canary-77",
                                                        "key": f"halt:deferred-{i}"}]} for i in range(3)]
    params = ArgumentSpecValidator(_killswitch.halt_argspec()).validate(
        {"targets": targets, "timeout": 10, "quiesce": 5, "quiesce_wait": False}).validated_parameters
    result, _warnings, failure = _killswitch.run_halt(params)
    returned = time.time()
    assert failure is None, result
    last = max(t["halted_at"] for t in result["targets"])
    assert result["quiesce_until"] == pytest.approx(last + 5, abs=0.002)
    assert returned < last + 1 and "quiesced_s" not in result  # did not wait the 5 s
    assert 4 < result["quiesce_left_s"] <= 5


def test_quiesce_left_counts_from_each_changed_engines_own_verified_halt():
    from ansible_collections.tradeops.remediation.plugins.module_utils._killswitch import quiesce_left

    targets = [{"name": "e1", "status": "halted", "before": "trading", "halted_at": 100.0},
               {"name": "e2", "status": "halted", "before": "unknown", "halted_at": 101.5},
               {"name": "e3", "status": "already_halted", "before": "halted", "halted_at": None},
               {"name": "e4", "status": "failed", "before": "unknown", "halted_at": None}]
    assert quiesce_left(targets, 3, "halted", now=102.0) == pytest.approx(2.5)
    assert quiesce_left(targets, 3, "halted", now=104.5) == 0  # the fan-out itself lasted the quiesce
    assert quiesce_left(targets[2:], 3, "halted", now=100.0) == 0  # nothing halted by this call
    assert quiesce_left(targets, 0, "halted", now=100.0) == 0
    assert quiesce_left([{"name": "e1", "status": "resumed", "resumed_at": 200.0}], 2, "resumed", now=200.5) == 1.5


def test_apply_all_halts_every_engine_with_its_first_method_before_any_engine_gets_the_rest_of_its_chain(redis_server):
    """One worker, three engines, each with two redis halt keys: the first keys of all three are set (and read back)
    before the second key of any. A chain applied engine by engine would set a-0, b-0, a-1, b-1, ..."""
    import json

    import redis
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    from ansible_collections.tradeops.remediation.plugins.module_utils import _killswitch

    def method(key):
        return {"type": "redis", "port": redis_server, "password": "pw-canary-77", "key": key}

    targets = [{"name": f"two-{i}", "methods": [method(f"halt:a-{i}"), method(f"halt:b-{i}")]} for i in range(3)]
    params = ArgumentSpecValidator(_killswitch.halt_argspec()).validate(
        {"targets": targets, "apply_all": True, "concurrency": 1, "timeout": 10}).validated_parameters
    result, _warnings, failure = _killswitch.run_halt(params)
    assert failure is None, result
    assert sorted(result["halted"]) == ["two-0", "two-1", "two-2"]
    probe = redis.Redis(port=redis_server, password="pw-canary-77", socket_timeout=5)
    try:
        at = {k: json.loads(probe.get(f"halt:{k}"))["at"] for k in ("a-0", "a-1", "a-2", "b-0", "b-1", "b-2")}
    finally:
        probe.close()
    assert max(at["a-0"], at["a-1"], at["a-2"]) < min(at["b-0"], at["b-1"], at["b-2"]), at
    for t in result["targets"]:
        # halted by its first method, made durable by both, its time its own work (not the wait for the others)
        assert t["method"] == "redis" and t["halted_at"] <= at[t["name"].replace("two-", "b-")]
        assert [h["source"].split()[-1] for h in t["held_by"]] == [f"halt:a-{t['name'][-1]}", f"halt:b-{t['name'][-1]}"]
        assert t["durable"] is True


@pytest.mark.parametrize("quiesce", [-1, float("nan"), float("inf"), 601])
def test_a_quiesce_out_of_range_fails_naming_the_option_before_any_engine_is_touched(redis_server, quiesce):
    import redis
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    from ansible_collections.tradeops.remediation.plugins.module_utils import _killswitch

    key = f"halt:untouched-{abs(hash(str(quiesce)))}"
    targets = [{"name": "untouched", "methods": [{"type": "redis", "port": redis_server, "password": "pw-canary-77",
                                                    "key": key}]}]
    params = ArgumentSpecValidator(_killswitch.halt_argspec()).validate(
        {"targets": targets, "quiesce": quiesce}).validated_parameters
    with pytest.raises(ValidationError, match="quiesce"):
        _killswitch.run_halt(params)
    probe = redis.Redis(port=redis_server, password="pw-canary-77", socket_timeout=5)
    try:
        assert probe.get(key) is None
    finally:
        probe.close()
