"""The Kubernetes paths of the isolate and service_recovery roles, run by real ansible-playbook with the
real kubernetes.core modules (k8s, k8s_scale, k8s_info, k8s_json_patch) and the official `kubernetes`
client, against a FAKE Kubernetes API: no real API server can run on this machine.

The fake (tests/unit/plugins/module_utils/k8s_fake.py) serves discovery, Deployments (with /scale),
ReplicaSets, Ingresses, Services and Secrets on 127.0.0.1 over plain http, validates what a real API
server validates for these objects, honours dryRun=All (kubernetes.core's check mode), runs an instant
deployment controller (ReplicaSets, revisions, status) and refuses any request without the bearer
token of the kubeconfig written here. Its strategic-merge patch is a plain merge, which is exact for
the fields these roles patch (see its docstring). Every assertion is on the fake's objects: what
`kubectl get` would show a user.
"""

from __future__ import annotations

import copy
import datetime
import re
import subprocess

import pytest

from tests.conftest import ROOT, VENV_BIN, ansible_env
from tests.unit.plugins.module_utils.k8s_fake import FakeKubernetes

pytestmark = pytest.mark.integration

TOKEN = "fake-k8s-bearer-token"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
REVISION = "deployment.kubernetes.io/revision"
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def rules_to(service, host):
    return [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
        "service": {"name": service, "port": {"number": 80}}}}]}}]


@pytest.fixture
def kube(tmp_path):
    fake = FakeKubernetes(token=TOKEN)
    fake.kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace="trading")
    yield fake
    fake.close()


def run_playbook(tmp_path, playbook: str, inventory: str, *args, kubeconfig_env: str | None = None):
    """Write the playbook and inventory, run ansible-playbook, return (proc, {host: changed})."""
    run = len(list(tmp_path.glob("playbook-*.yml")))
    (tmp_path / f"playbook-{run}.yml").write_text(playbook)
    (tmp_path / "inventory.yml").write_text(inventory)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {k: v for k, v in ansible_env().items() if not k.startswith("K8S_AUTH_") and k != "KUBECONFIG"}
    env["TMPDIR"] = str(tmp_path / "tmp")  # kubernetes.core's discovery cache goes there
    if kubeconfig_env:
        env["K8S_AUTH_KUBECONFIG"] = kubeconfig_env
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(tmp_path / "inventory.yml"),
           str(tmp_path / f"playbook-{run}.yml"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    recap = {m.group(1): {"changed": int(m.group(3)), "failed": int(m.group(5))} for m in RECAP.finditer(proc.stdout)}
    return proc, recap


LOCALHOST = """\
    localhost:
      ansible_connection: local
      ansible_python_interpreter: "{{ ansible_playbook_python }}"
"""


# ------------------------------------------------------------------------------------- isolate
ISOLATE_PLAY = """\
- name: Isolate (kubernetes)
  hosts: localhost
  gather_facts: false
  roles:
    - role: tradeops.remediation.isolate
      vars:
        isolate_runtime: kubernetes
        isolate_k8s_namespace: trading
        isolate_k8s_ingresses: [public, admin-public]
        isolate_k8s_public_deployments: [web, api-gateway]
"""


def isolate_stack(kube):
    kube.add("web", replicas=3, image="web:1")
    kube.add("api-gateway", replicas=2, image="gateway:1")
    kube.add("engine", replicas=2, image="engine:1")  # not public: must keep running
    kube.add_service("web")
    kube.add_ingress("public", rules=rules_to("web", "trade.example.test"))
    # a default backend, by port NAME: left in place it would keep receiving every request
    kube.add_ingress("admin-public", rules=rules_to("api-gateway", "admin.example.test"),
                     default_backend={"service": {"name": "web", "port": {"name": "http"}}})
    kube.add_ingress("internal", rules=rules_to("engine", "engine.internal.test"))  # not listed


def run_isolate(tmp_path, kube, *args):
    return run_playbook(tmp_path, ISOLATE_PLAY, "all:\n  hosts:\n" + LOCALHOST, *args,
                        kubeconfig_env=kube.kubeconfig)


def test_isolate_empties_the_ingresses_scales_public_deployments_to_zero_and_is_idempotent(kube, tmp_path):
    """FAKE Kubernetes API (no real API server can run here); kubeconfig via K8S_AUTH_KUBECONFIG."""
    isolate_stack(kube)
    assert kube.ingress("public")["spec"]["rules"] and kube.ingress("admin-public")["spec"]["rules"]
    assert kube.get("web")["spec"]["replicas"] == 3 and kube.get("api-gateway")["status"]["readyReplicas"] == 2
    untouched = {"engine": copy.deepcopy(kube.get("engine")), "internal": copy.deepcopy(kube.ingress("internal"))}

    proc, recap = run_isolate(tmp_path, kube)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert recap["localhost"]["changed"] == 2, proc.stdout[-3000:]

    blackhole = {"service": {"name": "tradeops-isolated", "port": {"number": 80}}}
    for name in ("public", "admin-public"):
        spec = kube.ingress(name)["spec"]
        assert "rules" not in spec, spec  # emptied (a real server omits an empty list)
        assert spec["defaultBackend"] == blackhole, spec  # the old default backend (port name) is gone
    assert not any(name == "tradeops-isolated" for _, name in kube.objects["services"])  # it must not exist
    for name in ("web", "api-gateway"):
        dep = kube.get(name)
        assert dep["spec"]["replicas"] == 0, dep
        assert not dep["status"].get("readyReplicas") and not dep["status"].get("availableReplicas")
    assert kube.get("engine") == untouched["engine"] and kube.ingress("internal") == untouched["internal"]
    # the kubeconfig's token was used, on every request
    assert kube.authorizations and set(kube.authorizations) == {f"Bearer {TOKEN}"}

    # a second run finds everything done: changed=0, and nothing in the fake moves
    before = copy.deepcopy(kube.objects)
    proc, recap = run_isolate(tmp_path, kube)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap["localhost"]["changed"] == 0, proc.stdout[-3000:]
    assert kube.objects == before


def test_isolate_check_mode_changes_nothing(kube, tmp_path):
    """FAKE Kubernetes API: --check sends only dryRun=All writes, and no object changes."""
    isolate_stack(kube)
    before = copy.deepcopy(kube.objects)
    proc, recap = run_isolate(tmp_path, kube, "--check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert recap["localhost"]["changed"] == 2  # it reports what it would change...
    assert kube.objects == before  # ...and changes nothing
    writes = kube.writes()
    assert writes and all("dryRun=All" in path for _, path in writes), writes


def test_isolate_refuses_when_the_blackhole_service_exists(kube, tmp_path):
    """FAKE Kubernetes API: an existing tradeops-isolated Service would defeat the isolation."""
    isolate_stack(kube)
    kube.add_service("tradeops-isolated")  # the ingresses would still route to real pods
    before = copy.deepcopy(kube.objects)
    proc, recap = run_isolate(tmp_path, kube)
    assert proc.returncode != 0 and recap["localhost"]["failed"] == 1, proc.stdout[-3000:]
    assert "The black-hole Service must not exist" in proc.stdout
    assert kube.objects == before and kube.writes() == []


def test_the_fake_refuses_an_ingress_with_neither_rules_nor_default_backend(kube):
    """FAKE Kubernetes API: what the role did before (patch spec.rules to [] alone) is refused by a real
    API server (upstream ValidateIngressSpec), and so by the fake."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    kube.add_ingress("public", rules=rules_to("web", "trade.example.test"))
    conf = client.Configuration()
    conf.host = kube.url
    conf.api_key = {"authorization": f"Bearer {TOKEN}"}
    with client.ApiClient(conf) as api_client:
        with pytest.raises(ApiException) as err:
            client.NetworkingV1Api(api_client).patch_namespaced_ingress("public", "trading", {"spec": {"rules": []}})
    assert err.value.status == 422
    assert "either `defaultBackend` or `rules` must be specified" in err.value.body
    assert kube.ingress("public")["spec"]["rules"]


# ---------------------------------------------------------------------------- service_recovery
def recovery_inventory(kube, deployment="engine"):
    probes = """\
      tradeops_health_probes:
        - name: {name}-ready
          type: kubernetes
          deployment: {name}
          namespace: trading
          kubeconfig: {kubeconfig}
"""
    host = """\
    {host}:
      ansible_connection: local
      ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
      service_recovery_runtime: kubernetes
      service_recovery_deployment: {name}
      service_recovery_namespace: trading
      service_recovery_kubeconfig: {kubeconfig}
"""
    hosts = ""
    for name, hostname in ((deployment, "engine-k8s"), ("bystander", "bystander-k8s")):
        hosts += host.format(host=hostname, name=name, kubeconfig=kube.kubeconfig)
        hosts += probes.format(name=name, kubeconfig=kube.kubeconfig)
    return "all:\n  hosts:\n" + LOCALHOST + hosts


# keep_halted is off: the kill switch has its own tests; here only the kubernetes runtime is exercised
RECOVERY_PLAY = """\
- name: Repair (kubernetes)
  hosts: engine-k8s:bystander-k8s
  gather_facts: false
  roles:
    - role: tradeops.remediation.service_recovery
      vars:
        service_recovery_components: [engine-k8s]
        service_recovery_keep_halted: false
        service_recovery_rto_seconds: 1.5
        service_recovery_interval: 0.2
        service_recovery_stable_for: 0.4
"""


def recovery_stack(kube):
    kube.add("bystander", replicas=2, image="bystander:1")  # healthy, not a NO-GO component: left alone
    kube.add("api", replicas=1, image="api:1")  # shares the `app` label key; sorts before "engine"
    kube.rollout("api", "api:2")


def run_recovery(tmp_path, kube, *args):
    return run_playbook(tmp_path, RECOVERY_PLAY, recovery_inventory(kube), *args)


def test_restart_rolls_out_a_new_revision_and_only_for_the_nogo_component(kube, tmp_path):
    """FAKE Kubernetes API; kubeconfig via service_recovery_kubeconfig (and the probe's kubeconfig)."""
    recovery_stack(kube)
    kube.add("engine", replicas=2, image="engine:1")
    assert RESTARTED_AT not in (kube.get("engine")["spec"]["template"]["metadata"].get("annotations") or {})
    assert kube.get("engine")["metadata"]["annotations"][REVISION] == "1"
    untouched = {name: copy.deepcopy(kube.get(name)) for name in ("bystander", "api")}

    started = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)
    proc, recap = run_recovery(tmp_path, kube)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert recap["engine-k8s"]["changed"] == 1 and recap["bystander-k8s"]["changed"] == 0, proc.stdout[-3000:]

    engine = kube.get("engine")
    restarted_at = engine["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
    restarted = datetime.datetime.fromisoformat(restarted_at.rstrip("Z"))
    assert started <= restarted <= datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert engine["metadata"]["annotations"][REVISION] == "2"  # a rollout: new pods, a new ReplicaSet
    assert [rs["metadata"]["annotations"][REVISION] for rs in kube.replicasets_of("engine")] == ["1", "2"]
    assert engine["spec"]["template"]["spec"]["containers"][0]["image"] == "engine:1"
    assert engine["status"]["readyReplicas"] == 2
    assert {name: kube.get(name) for name in untouched} == untouched
    patched = [path for method, path in kube.writes()]
    assert patched == ["/apis/apps/v1/namespaces/trading/deployments/engine"], patched
    assert set(kube.authorizations) == {f"Bearer {TOKEN}"}  # service_recovery_kubeconfig was used


def test_restart_in_check_mode_changes_nothing(kube, tmp_path):
    """FAKE Kubernetes API: --check sends only dryRun=All writes, and no object changes."""
    recovery_stack(kube)
    kube.add("engine", replicas=2, image="engine:1")
    before = copy.deepcopy(kube.objects)
    proc, recap = run_recovery(tmp_path, kube, "--check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert recap["engine-k8s"]["changed"] == 1
    assert kube.objects == before
    writes = kube.writes()
    assert writes and all("dryRun=All" in path for _, path in writes), writes


def test_a_failed_restart_rolls_back_to_the_last_revision_with_other_pods(kube, tmp_path):
    """FAKE Kubernetes API. engine:2 never becomes ready; the restart (same pods) cannot help, and
    neither can "revision - 1" (the pre-restart revision, engine:2 again): the rollback must reach
    engine:1, and must not take another deployment's ReplicaSet of that revision number."""
    recovery_stack(kube)
    kube.add("engine", replicas=2, image="engine:1")
    kube.unready_images.add("engine:2")
    kube.rollout("engine", "engine:2")
    first = kube.replicasets_of("engine")[0]
    assert kube.get("engine")["metadata"]["annotations"][REVISION] == "2"
    assert not kube.get("engine")["status"].get("readyReplicas")
    api_before = copy.deepcopy(kube.get("api"))

    proc, recap = run_recovery(tmp_path, kube)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert "Roll the deployment back" in proc.stdout and recap["engine-k8s"]["changed"] == 2

    engine = kube.get("engine")
    assert engine["spec"]["template"]["spec"]["containers"][0]["image"] == "engine:1"
    assert RESTARTED_AT not in (engine["spec"]["template"]["metadata"].get("annotations") or {})
    assert engine["spec"]["template"]["metadata"]["labels"] == {"app": "engine"}  # no pod-template-hash
    assert engine["status"]["readyReplicas"] == 2
    # revision 1's ReplicaSet is back, as the newest revision (restart = 3, rollback = 4)
    assert engine["metadata"]["annotations"][REVISION] == "4"
    assert kube.replicasets[("trading", first["metadata"]["name"])]["metadata"]["annotations"][REVISION] == "4"
    assert kube.get("api") == api_before
    assert [path for _, path in kube.writes()] == ["/apis/apps/v1/namespaces/trading/deployments/engine"] * 2


def test_no_earlier_revision_with_other_pods_stops_with_a_clear_message(kube, tmp_path):
    """FAKE Kubernetes API: broken since revision 1, so there is nothing to roll back to."""
    recovery_stack(kube)
    kube.add("engine", replicas=2, image="engine:2")  # broken from its first revision
    kube.unready_images.add("engine:2")

    proc, recap = run_recovery(tmp_path, kube)
    assert proc.returncode != 0 and recap["engine-k8s"]["failed"] == 1, proc.stdout[-4000:]
    assert "has no earlier revision whose pods differ from the current ones" in proc.stdout
    assert "Trading stays halted" in proc.stdout
    engine = kube.get("engine")
    assert RESTARTED_AT in engine["spec"]["template"]["metadata"]["annotations"]  # the restart happened...
    assert engine["spec"]["template"]["spec"]["containers"][0]["image"] == "engine:2"  # ...no rollback
    assert len(kube.writes()) == 1


SCALE_PLAY = """\
- name: Scale out (kubernetes)
  hosts: engine-k8s
  gather_facts: false
  tasks:
    - name: One more replica, within the maximum
      ansible.builtin.include_role:
        name: tradeops.remediation.service_recovery
        tasks_from: scale_kubernetes
      vars:
        service_recovery_max_replicas: 3
"""


def test_scale_out_adds_one_replica_up_to_the_maximum_and_only_to_its_deployment(kube, tmp_path):
    """FAKE Kubernetes API: performance_degradation's scale-out (service_recovery tasks_from scale_kubernetes)."""
    recovery_stack(kube)
    kube.add("engine", replicas=2, image="engine:1")
    bystander = copy.deepcopy(kube.get("bystander"))

    proc, _ = run_playbook(tmp_path, SCALE_PLAY, recovery_inventory(kube), "--check")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert kube.get("engine")["spec"]["replicas"] == 2  # check mode: nothing scaled

    proc, recap = run_playbook(tmp_path, SCALE_PLAY, recovery_inventory(kube))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert kube.get("engine")["spec"]["replicas"] == 3 and recap["engine-k8s"]["changed"] == 1
    proc, recap = run_playbook(tmp_path, SCALE_PLAY, recovery_inventory(kube))
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert kube.get("engine")["spec"]["replicas"] == 3 and recap["engine-k8s"]["changed"] == 0  # at the maximum
    assert kube.get("bystander") == bystander
