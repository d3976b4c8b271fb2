#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: health_check
short_description: GO / NO-GO health probes across the trading stack, concurrently
version_added: 0.1.0
description:
  - Runs a list of O(probes) (HTTP, TCP, PostgreSQL, Redis, Docker container, Kubernetes deployment,
    disk, memory, load and Prometheus metric) B(concurrently), each with its own O(probes[].timeout),
    and returns one result per probe plus an overall RV(status) of V(GO) or V(NO-GO).
  - The overall status is V(NO-GO) when any probe of O(probes[].severity=critical) fails. A failing
    O(probes[].severity=warning) probe is reported as V(WARN) (and as an Ansible warning) and does not
    make the overall status V(NO-GO).
  - With O(wait_for) the probes are run again every O(interval) seconds until the overall status is
    V(GO), or the deadline ends. With O(stable_for) the overall status must stay V(GO) for that long.
    The module returns as soon as the condition holds.
  - It only reads. It never fails the task for a V(NO-GO) unless O(fail_on_nogo=true), so it can be
    used to assess (register the result) as well as to gate.
  - Invalid probe options fail the task before anything is probed, naming the probe and the option.
author:
  - tradeops SRE team (@tradeops)
extends_documentation_fragment:
  - tradeops.remediation.controller_run
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - Probes only read, so they run normally in check mode and report the real status.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - Nothing is changed; RV(ignore:changed) is always V(false).
options:
  probes:
    description:
      - The probes. Each has a unique O(probes[].name) and a O(probes[].type); the other options
        apply to the types named at the start of their description.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Required. A unique name for the probe, used in results and messages.
        type: str
      type:
        description:
          - Required. V(http), V(tcp), V(postgres), V(redis), V(docker), V(kubernetes), V(disk), V(memory),
            V(load) or V(metric).
          - V(disk), V(memory) and V(load) measure the host the module runs on; every other type
            connects from that host to the endpoint given.
        type: str
      timeout:
        description:
          - Seconds this probe may take. A probe that has not answered by then is V(NO-GO) and delays
            no other probe. With O(wait_for), it is further bounded by what is left of that deadline.
        type: float
        default: 5.0
      severity:
        description:
          - V(critical) or V(warning). A failing V(warning) probe is reported as V(WARN) and does not
            make the overall status V(NO-GO).
        type: str
        default: critical
      component:
        description:
          - Which host or component the probe checks, for example V(engine-003). Echoed in the results;
            RV(nogo_components) lists the components of the V(NO-GO) probes, so that a role can restart
            exactly those.
        type: str
      url:
        description:
          - (http, metric) The URL, for example C(http://engine:8001/health/detailed) or
            C(http://engine:8001/metrics).
        type: str
      method:
        description:
          - (http) V(GET), V(HEAD) or V(OPTIONS); a probe never sends a request that could change anything.
            Default V(GET).
        type: str
      # fragment: http_options.auth prefix="(http, metric)"
      headers:
        description: (http, metric) Extra request headers. Put a secret in the token option, not here.
        type: dict
      token:
        description: (http, metric) A token sent in the header named by the token_header option, for example an admin token.
        type: str
      token_header:
        description: (http, metric) The header that carries the token. Default V(X-Admin-Token).
        type: str
      # end fragment
      status:
        description: (http) The status codes that mean healthy. Default V([200]).
        type: list
        elements: int
      field:
        description:
          - (http) Dotted path of a JSON field of the response that must equal O(probes[].value), for
            example V(trading_status). List items are addressed by index (V(engines.0.status)).
        type: str
      value:
        description:
          - (http) The value of O(probes[].field) that means healthy, for example V(GO). Compared
            JSON-aware, so V(true) matches C(true) and V("1") matches C(1).
          - The field's actual value is returned as RV(probes[].value).
        type: raw
      capture:
        description:
          - (http) Dotted paths of JSON fields of the answer to return as RV(probes[].captured), whatever the
            probe's status (for example the C(haltReason) and C(pnl) of seed 004's C(/pnl/status)). A field
            that is not in the answer is returned as V(null). Known secrets in the values are masked.
        type: list
        elements: str
      max_latency_ms:
        description: (http) A response slower than this many milliseconds is V(NO-GO).
        type: float
      # fragment: http_options.transport prefix="(http, metric)" prefix@validate_certs="(http, metric, kubernetes)"
      validate_certs:
        description: (http, metric, kubernetes) Validate the server's TLS certificate and host name. Default V(true).
        type: bool
      ca_path:
        description: (http, metric) A CA bundle (PEM) to validate the server's TLS certificate with, instead of the system's.
        type: path
      client_cert:
        description:
          - (http, metric) A client certificate (PEM) to present to the server (mutual TLS). It may hold the private key too.
        type: path
      client_key:
        description:
          - (http, metric) The private key (PEM, unencrypted) of the client certificate, when it is not in the certificate file.
        type: path
      proxy:
        description:
          - (http, metric) An HTTP proxy to send the requests through, for example C(http://proxy.internal:3128). HTTPS goes through it with C(CONNECT).
          - Without it, the proxy environment variables of the module's host apply (C(https_proxy), C(no_proxy)).
        type: str
      # end fragment
      host:
        description: (tcp, redis) Host name or address. Required for V(tcp); default V(127.0.0.1) for V(redis).
        type: str
      port:
        description: (tcp, redis) Port. Required for V(tcp); default V(6379) for V(redis).
        type: int
      # fragment: redis prefix=(redis) skip=host,port
      db:
        description: (redis) The Redis database number. Default V(0).
        type: int
      username:
        description: (redis) The Redis ACL user name.
        type: str
      password:
        description: (redis) The Redis password. Keep it in Ansible Vault; it is never returned or logged.
        type: str
      tls:
        description: (redis) Connect with TLS. Default V(false).
        type: bool
      # end fragment
      login_host:
        description:
          - (postgres) Host of the PostgreSQL server. Without it libpq's default applies (the local socket).
          - The V(postgres) probe connects and runs C(SELECT 1); RV(probes[].value) is the server version.
          - The connection options are the same as the top-level ones of the C(tradeops.remediation.postgres)
            documentation fragment, without their defaults in the argument spec; the defaults below apply.
        type: str
      login_port:
        description: (postgres) Port of the PostgreSQL server. Default V(5432).
        type: int
      login_db:
        description: (postgres) Database to connect to. Default libpq's (named after the user).
        type: str
      login_user:
        description: (postgres) Role to connect as. Default libpq's (the operating system user).
        type: str
      login_password:
        description: (postgres) Password of O(probes[].login_user). Never returned.
        type: str
      sslmode:
        description:
          - (postgres) libpq's C(sslmode), one of V(disable), V(allow), V(prefer), V(require), V(verify-ca)
            or V(verify-full). Default V(prefer).
        type: str
      connect_timeout:
        description:
          - (postgres) Seconds to wait for the connection, further bounded by O(probes[].timeout).
            libpq counts whole seconds and treats values below 2 as 2. Default V(5).
        type: int
      write:
        description:
          - (postgres, redis) Also prove the server takes a write. Default V(false).
          - V(postgres) commits a transaction id (C(SELECT pg_is_in_recovery(), txid_current())), which a standby, a
            server in recovery or a full disk refuses.
          - V(redis) sets and deletes a probe key of its own (C(tradeops:probe:*), 30 s expiry), which a server out of
            memory under C(noeviction) refuses while it still answers C(PING).
        type: bool
      # fragment: docker prefix=(docker)
      container:
        description: (docker) The container's name or id.
        type: str
      docker_host:
        description: (docker) The Docker daemon's API URL. Default V(unix:///var/run/docker.sock).
        type: str
      # end fragment
      deployment:
        description:
          - (kubernetes) The deployment. V(GO) when its ready replicas are at least O(probes[].min_ready).
        type: str
      # fragment: kubernetes prefix=(kubernetes) skip=validate_certs
      namespace:
        description: (kubernetes) The namespace. Default V(default).
        type: str
      kubeconfig:
        description: (kubernetes) Path of a kubeconfig file, used when no API URL is given. Default C(~/.kube/config).
        type: path
      context:
        description: (kubernetes) The kubeconfig context to use. Default the kubeconfig's current context.
        type: str
      api_url:
        description: (kubernetes) The Kubernetes API URL, for example C(https://k8s.example:6443). It takes precedence over the kubeconfig.
        type: str
      api_key:
        description: (kubernetes) A bearer token for the API URL. Keep it in Ansible Vault; it is never returned or logged.
        type: str
      # end fragment
      min_ready:
        description:
          - (kubernetes) Ready replicas needed for V(GO). Default the deployment's C(spec.replicas); a
            deployment scaled to 0 is then V(NO-GO) (set V(0) to accept it).
        type: int
      path:
        description: (disk) An absolute path on the filesystem to check, for example V(/var/lib/postgresql).
        type: path
      min_free_bytes:
        description:
          - (disk) Free space needed, in bytes or with a unit (V(1G), V(500M)). Free space is what
            unprivileged users can use (C(df)'s Avail).
          - At least one of O(probes[].min_free_bytes) and O(probes[].min_free_percent) is required.
        type: bytes
      min_free_percent:
        description: (disk) Free space needed, in percent, as C(df) shows it (100 minus C(Use%)).
        type: float
      max_used_percent:
        description:
          - (memory) Required. Used memory above this percent is V(NO-GO). Used is C(MemTotal - MemAvailable)
            from C(/proc/meminfo) (the host's, not a container's cgroup limit).
        type: float
      max_load_per_cpu:
        description:
          - (load) Required. The 1-minute load average divided by the number of CPUs above this is V(NO-GO);
            V(0.8) matches the runbooks' "CPU above 80%".
        type: float
      metric:
        description:
          - (metric) Name of the sample in the Prometheus text exposition at O(probes[].url), for example
            V(errors_total) or V(request_latency_seconds_count).
          - Exactly one sample must match the name and O(probes[].labels); none (or several) is V(NO-GO).
        type: str
      labels:
        description:
          - "(metric) Labels the sample must have (others may be present), for example C({engine: engine-001}).
            Numeric label values match numerically, so V(1) matches C(le=\"1.0\")."
        type: dict
      min:
        description: (metric) V(GO) needs the value to be at least this. C(NaN) is never V(GO).
        type: float
      max:
        description: (metric) V(GO) needs the value to be at most this.
        type: float
  wait_for:
    description:
      - Seconds to keep probing until the overall status is V(GO) (and stable, see O(stable_for)).
        V(0) probes once. The deadline bounds everything, probe timeouts included.
    type: float
    default: 0
  interval:
    description: Seconds between the starts of two rounds of probes, with O(wait_for) or O(stable_for).
    type: float
    default: 1
  stable_for:
    description:
      - Seconds the overall status must stay V(GO), probing every O(interval), before V(GO) is returned.
        A single V(NO-GO) round restarts the count.
      - Without O(wait_for) the first V(NO-GO) round ends the run; with it, probing goes on until the
        deadline, which must be longer than O(stable_for).
    type: float
    default: 0
  concurrency:
    description: How many probes run at the same time.
    type: int
    default: 32
  fail_on_nogo:
    description:
      - Fail the task when the overall status is V(NO-GO), with a message naming every V(NO-GO) probe
        and why. Off by default, so that the module can be used to assess; turn it on for a gate.
    type: bool
    default: false
  gate:
    description:
      - This call is the health gate that a resume depends on. When the overall status is V(GO) (and not in
        check mode), the module's action plugin records the result, with every probed component's status, in
        the controller temp directory of this C(ansible-playbook) process; any other outcome erases an
        earlier record. M(tradeops.remediation.halt_trading) with O(tradeops.remediation.halt_trading#module:state=resumed)
        refuses every target that this record does not show V(GO).
      - The record lives only as long as the run, and no variable can supply it.
    type: bool
    default: false
notes:
  - "Run it once, on the controller (C(run_once: true), C(delegate_to: localhost)), to probe the whole stack
    in one round trip; run it on each host for the V(disk), V(memory) and V(load) probes of that host."
  - The V(postgres), V(redis), V(docker) and V(kubernetes) probes need the Python libraries C(psycopg2),
    C(redis), C(docker) and C(kubernetes) on the host that runs the module. Without one, that probe is
    V(NO-GO) and says what to install.
  - Secrets (O(probes[].token), O(probes[].password), O(probes[].login_password), O(probes[].api_key)) never
    appear in messages or values.
seealso:
  - module: tradeops.remediation.halt_trading
"""

EXAMPLES = r"""
- name: Assess the stack (never fails; register and decide)
  tradeops.remediation.health_check:
    probes:
      - name: engine-001-api
        component: engine-001
        type: http
        url: http://10.0.0.11:8001/health/detailed
        field: trading_status
        value: GO
        max_latency_ms: 500
      - name: engine-001-errors
        component: engine-001
        type: metric
        url: http://10.0.0.11:8001/metrics
        metric: errors_total
        labels: {engine: engine-001}
        max: 0
      - name: orders-db
        component: postgres
        type: postgres
        login_host: db.internal
        login_db: trading
        login_user: monitor
        login_password: "{{ vault_pg_monitor_password }}"
        sslmode: verify-full
      - name: halt-flags
        type: redis
        host: redis.internal
        password: "{{ vault_redis_password }}"
      - name: engine-k8s
        type: kubernetes
        deployment: engine
        namespace: trading
  run_once: true
  delegate_to: localhost
  register: health

- name: Restart exactly the engines that are NO-GO
  ansible.builtin.debug:
    msg: "restart {{ health.nogo_components }}"
  when: health.status == 'NO-GO'

- name: Health gate before resuming - every probe GO and stable for 30 s, within 2 minutes
  tradeops.remediation.health_check:
    wait_for: 120
    stable_for: 30
    interval: 2
    fail_on_nogo: true
    probes:
      - name: engine-001-api
        type: http
        url: http://10.0.0.11:8001/health
      - name: engine-001-port
        type: tcp
        host: 10.0.0.11
        port: 8001
        timeout: 2
  run_once: true
  delegate_to: localhost

- name: Host resources of each engine host (runs on the host itself)
  tradeops.remediation.health_check:
    probes:
      - name: root-disk
        type: disk
        path: /
        min_free_bytes: 1G
        min_free_percent: 10
      - name: memory
        type: memory
        max_used_percent: 90
      - name: cpu
        type: load
        max_load_per_cpu: 0.8
        severity: warning
      - name: engine-container
        type: docker
        container: trading-engine
"""

RETURN = r"""
gate_recorded:
  description: With O(gate=true), whether this run's health gate record now says V(GO) (written by the action plugin).
  returned: when O(gate=true) and not in check mode
  type: bool
status:
  description: V(GO) when no critical probe failed (and, with O(stable_for), stayed so long enough); else V(NO-GO).
  returned: always
  type: str
  sample: GO
msg:
  description: A one-line summary naming the probes that are not V(GO).
  returned: always
  type: str
  sample: "NO-GO: 1 of 3 probes NO-GO: engine-003-api: GET http://10.0.0.13:8001/health: [Errno 111] Connection refused"
probes:
  description: One result per probe, from the last round, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The probe name.
      type: str
      sample: engine-001-api
    type:
      description: The probe type.
      type: str
      sample: http
    component:
      description: The probe's O(probes[].component), or V(null).
      type: str
      sample: engine-001
    severity:
      description: V(critical) or V(warning).
      type: str
      sample: critical
    status:
      description: V(GO), V(NO-GO) (a failing critical probe) or V(WARN) (a failing warning probe).
      type: str
      sample: GO
    value:
      description:
        - What the probe measured. http - the O(probes[].field) value, else the status code; tcp - V(open);
          postgres - the server version; redis - V(PONG); docker - C({status, health});
          kubernetes - the ready replicas; disk - C({free_bytes, free_percent}); memory - the used
          percent; load - the load per CPU; metric - the sample value (V(+Inf), V(-Inf) and V(NaN) as text).
        - V(null) when the probe could not measure anything.
      type: raw
      sample: GO
    captured:
      description: (http) The O(probes[].capture) fields of the answer, by path. Only when the probe has
        O(probes[].capture) and its answer had an expected status.
      type: dict
      returned: when O(probes[].capture) is set
      sample: {"haltReason": "daily_loss_limit", "pnl": -5250.0}
    latency_ms:
      description: How long the probe took, in milliseconds.
      type: int
      sample: 4
    message:
      description: What was found, or why the probe is not V(GO).
      type: str
      sample: "GET http://10.0.0.11:8001/health/detailed answered HTTP 200 in 3 ms with trading_status='GO'"
nogo:
  description: Names of the critical probes that are V(NO-GO).
  returned: always
  type: list
  elements: str
  sample: [engine-003-api]
warning_probes:
  description:
    - Names of the warning probes that failed (status V(WARN)).
    - Named C(warning_probes) because C(warnings) is reserved by Ansible for its own warnings.
  returned: always
  type: list
  elements: str
  sample: [cpu]
nogo_components:
  description: The sorted, unique O(probes[].component) values of the V(NO-GO) probes.
  returned: always
  type: list
  elements: str
  sample: [engine-003]
attempts:
  description:
    - How many rounds of probes ran.
    - When the task itself loops with C(until), Ansible replaces this with its own attempt count.
  returned: always
  type: int
  sample: 1
stable_seconds:
  description: How long the overall status had been V(GO) when the module returned (0 when V(NO-GO)).
  returned: always
  type: float
  sample: 0.0
elapsed_ms:
  description: Wall time of the whole call, in milliseconds.
  returned: always
  type: int
  sample: 12
ran_on_controller:
  description: The call ran in the controller's own process, not as a module (see the notes).
  returned: when it ran on the controller
  type: bool
  sample: true
"""

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._module import run_module
from ansible_collections.tradeops.remediation.plugins.module_utils._probes import WARN, ProbeService, probe_argspec

# The suboptions of probes: the common options and every probe type's own, each type composed from its
# backend's option groups (plugins/module_utils/_http.py, _redis.py, _docker.py, _kubernetes.py, _postgres.py).
PROBE_SPEC = probe_argspec()

ARGUMENT_SPEC = dict(
    probes=dict(type="list", elements="dict", required=True, options=PROBE_SPEC),
    wait_for=dict(type="float", default=0),
    interval=dict(type="float", default=1),
    stable_for=dict(type="float", default=0),
    concurrency=dict(type="int", default=32),
    fail_on_nogo=dict(type="bool", default=False),
    gate=dict(type="bool", default=False),
)


def run(params, check_mode=False, diff=False):
    """What the module does with its validated ``params``: ``(result, warnings, failure message or None)``.

    The module and its action plugin (which runs it in the controller's process) both call this. Probes are
    read-only, so check mode probes as well.
    """
    try:
        service = ProbeService(
            params["probes"],
            wait_for=params["wait_for"],
            interval=params["interval"],
            stable_for=params["stable_for"],
            concurrency=params["concurrency"],
        )
        result = service.run()
    except ValidationError as err:
        raise TradeopsError("%s. Nothing was probed: fix the options and re-run." % err)
    warnings = ["health_check: %s is WARN: %s" % (probe["name"], probe["message"])
                for probe in result["probes"] if probe["status"] == WARN]
    message = None
    if params["fail_on_nogo"]:
        failure = ProbeService.failure_message(result)
        if failure:
            # the results come back with the failure; its msg says what is NO-GO and what to do
            message = "health_check: %s" % failure
    return result, warnings, message


def main():
    run_module(ARGUMENT_SPEC, run, "health_check: ")


if __name__ == "__main__":
    main()
