"""Unit tests of _secrets' typed state (RotationResult, RevokePlan) and of the options it checks
through the backend layer (_validate, _http, _kubernetes). No network: nothing here sends a request.
"""

from __future__ import annotations

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._secrets import (
    BatchRotation,
    HttpRevoke,
    HttpTest,
    RevokePlan,
    RotationResult,
    RotationService,
    build_store,
)

RESULT_KEYS = {"changed", "store", "fingerprint_key_id", "fingerprint", "previous_fingerprint", "pending_fingerprint",
               "revoked_fingerprint", "stage", "rolled_back", "steps", "backup_files"}


def env(tmp_path, text="TOKEN=CANARY-old-secret-7f3e9a1d2c\n"):
    path = tmp_path / "app.env"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


# ---------------------------------------------------------------------------- the typed state


def test_a_result_declares_every_field_and_builds_the_dict_in_one_place():
    result = RotationResult(store={"type": "env_file"}, fingerprint_key_id="one-off")
    assert set(result.as_dict()) == RESULT_KEYS  # diff and msg only once set
    assert result.as_dict()["changed"] is False and result.as_dict()["rolled_back"] is False
    assert result.steps == [] and result.backup_files == []
    result.diff, result.msg = {"before": ""}, "failed"
    assert set(result.as_dict()) == RESULT_KEYS | {"diff", "msg"}
    with pytest.raises(AttributeError):
        result.undeclared = 1  # __slots__: a field not declared cannot be set
    with pytest.raises(TypeError, match="has no field stages"):
        RotationResult(stages="set")


def test_each_result_has_its_own_lists():
    one, two = RotationResult(), RotationResult()
    one.steps.append({"step": "create"})
    one.backup_files.append("/x.bak")
    assert two.steps == [] and two.backup_files == []


def test_a_revoke_plan_defaults_every_field():
    plan = RevokePlan(current="v", grace=True, which="new")
    assert (plan.snap, plan.diff_before, plan.unchanged_diff) == (None, None, None)


def test_a_service_declares_its_run_state_before_a_run(tmp_path):
    service = RotationService(build_store({"type": "env_file", "key": "TOKEN", "path": env(tmp_path)}))
    assert (service.result, service._deadline, service._plan) == (None, None, None)
    assert service.revoke_previous_value() is None and not service.needs_grace()


def test_the_single_form_result_keys_and_values(tmp_path):
    service = RotationService(build_store({"type": "env_file", "key": "TOKEN", "path": env(tmp_path)}),
                              value="CANARY-new-secret-0123456789", staging="direct")
    result = service.run()
    assert set(result) == RESULT_KEYS | {"diff"}
    assert result["changed"] is True and result["stage"] == "finished" and result["rolled_back"] is False
    assert [s["step"] for s in result["steps"]] == ["create", "set", "test", "finish"]
    assert result["store"] == {"type": "env_file", "location": f"env_file {tmp_path / 'app.env'}", "key": "TOKEN",
                               "previous_key": "TOKEN_PREVIOUS", "pending_key": "TOKEN_PENDING"}
    assert result["revoked_fingerprint"] is None and len(result["backup_files"]) == 1


# ---------------------------------------------------------------------------- options through the backend layer


@pytest.mark.parametrize(("spec", "message"), [
    ({"url": "ftp://x/"}, "test.url must start with http:// or https://"),
    ({"urls": ["http://a/", "file:///etc/passwd"]}, r"test.urls\[1\] must start with http:// or https://"),
    ({"url": "http://a/", "urls": ["ftp://b/"]}, r"test.urls\[0\] must start with http:// or https://"),
    ({"url": "http://[::1/"}, "test.url is not a valid URL"),
    ({"url": "http://a/", "concurrency": 0}, "test.concurrency must be at least 1, got 0"),
    ({"url": "http://a/", "concurrency": "many"}, "test.concurrency must be a whole number, got 'many'"),
    ({"url": "http://a/", "client_key": "/k.pem"}, "test.client_key needs test.client_cert"),
    ({}, "test.url or test.urls is required"),
])
def test_a_bad_test_option_is_refused_naming_it(spec, message):
    with pytest.raises(ValidationError, match=message):
        HttpTest(spec)


def test_test_urls_are_kept_once_in_order_and_a_password_is_masked():
    test = HttpTest({"url": "http://a/", "urls": ["http://b/", "http://a/"], "concurrency": "4"})
    assert (test.urls, test.concurrency) == (["http://a/", "http://b/"], 4)
    assert HttpTest({"url": "http://a/"}).concurrency == 32
    with pytest.raises(ValidationError, match=r"\*\*\*\*\*\*\*\*") as err:
        HttpTest({"url": "ftp://user:hunter2-password@a/"})
    assert "hunter2-password" not in str(err.value)


def test_the_revoke_and_vault_options_name_their_option():
    with pytest.raises(ValidationError, match="revoke.url must start with http:// or https://"):
        HttpRevoke({"url": "a/revoke"})
    with pytest.raises(ValidationError, match="revoke.client_key needs revoke.client_cert"):
        HttpRevoke({"url": "http://a/revoke", "client_key": "/k.pem"})
    base = {"type": "vault_kv2", "key": "k", "url": "http://vault:8200", "path": "app", "token": "t"}
    for option in ("url", "path", "token"):
        with pytest.raises(ValidationError, match=f"^store.{option} is required for store type vault_kv2$"):
            build_store(dict(base, **{option: ""}))
    with pytest.raises(ValidationError, match="store.url must start with http:// or https://"):
        build_store(dict(base, url="vault:8200"))
    store = build_store(dict(base, validate_certs=False, ca_path="/ca.pem", client_cert="/c.pem", client_key="/k.pem"))
    transport = store.transport
    assert (transport.validate_certs, transport.ca_path, transport.client_cert, transport.client_key) == (
        False, "/ca.pem", "/c.pem", "/k.pem")
    assert transport.headers == {}  # the Vault token goes to hvac, not into headers


def test_the_kubernetes_store_validates_its_connection_when_built():
    with pytest.raises(ValidationError, match="store.api_url must start with http:// or https://"):
        build_store({"type": "kubernetes", "key": "k", "name": "s", "api_url": "127.0.0.1:6443"})
    store = build_store({"type": "kubernetes", "key": "k", "name": "s", "api_url": "http://127.0.0.1:1",
                         "context": "lab"})
    assert store.namespace == "default" and store.describe() == "kubernetes secret default/s"
    assert store._lock_key() == ("kubernetes", "http://127.0.0.1:1", "lab", "default", "s")
    store = build_store({"type": "kubernetes", "key": "k", "name": "s", "namespace": "trading",
                         "kubeconfig": "/kube/config"})
    assert store._lock_key() == ("kubernetes", "/kube/config", None, "trading", "s")
    with pytest.raises(ValidationError, match="^store.path is required for store type env_file$"):
        build_store({"type": "env_file", "key": "k"})


@pytest.mark.parametrize(("concurrency", "message"), [
    (0, "concurrency must be at least 1, got 0"),
    (None, "concurrency must be at least 1, got None"),
    ("x", "concurrency must be a whole number, got 'x'"),
])
def test_a_bad_batch_concurrency_is_refused(tmp_path, concurrency, message):
    service = RotationService(build_store({"type": "env_file", "key": "TOKEN", "path": env(tmp_path)}))
    with pytest.raises(ValidationError, match=message):
        BatchRotation([("a", service)], concurrency=concurrency)
    assert BatchRotation([("a", service)], concurrency="3").concurrency == 3
