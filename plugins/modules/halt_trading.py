#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: halt_trading
short_description: Halt (or resume) trading on many engines at once, verified
version_added: 0.1.0
description:
  - "The kill switch. Halts trading on every target concurrently, inside B(one) module call, so
    halting 200 engines costs one round trip instead of 200 Ansible tasks. Run it once, on the
    controller (C(run_once: true), C(delegate_to: localhost))."
  - Each target has an ordered chain of O(targets[].methods). After each method the state is read back;
    if it does not show trading stopped, the next method in the chain is tried.
  - A halt is verified, never assumed. A kill switch that answers 200 but does not stop
    trading comes out as unverified, and the module fails naming it.
  - Every target has its own deadline (O(timeout)); a dead or hung target never delays the
    others. Each method in a chain gets a fair share of the time left, so a hung API still
    leaves time for the fallback.
  - O(state=resumed) reverses every method of the chain and verifies that trading is back.
    Gate it; see the C(tradeops.remediation.halt_trading) role.
author:
  - tradeops SRE team (@tradeops)
extends_documentation_fragment:
  - tradeops.remediation.controller_run
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads each target's current state (read-only requests) and reports what would change.
        Nothing is written.
  diff_mode:
    support: full
    details:
      - The diff maps each target name to V(trading), V(halted) or V(unknown) before and after.
  idempotent:
    support: full
    details:
      - Targets already halted (or, with O(state=resumed), already trading) report C(changed=false).
options:
  targets:
    description:
      - The engines to halt. Each has a O(targets[].name) and an ordered chain of O(targets[].methods).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: A unique name for the target, used in results and messages.
        type: str
      verify:
        description:
          - A status request that proves the engine stopped trading, used for every method of the
            target that has no O(targets[].methods[].verify) of its own.
          - Without one, flag-style methods (redis, file, docker, kubernetes) are verified by
            reading their own flag back, and an C(http) method cannot be verified.
        type: dict
        suboptions: &verify_suboptions
          url:
            description: The status URL, for example C(http://engine:8001/api/v1/trading/status).
            type: str
          method:
            description: HTTP method of the status request. Default V(GET).
            type: str
          field:
            description: Dotted path of the JSON field that shows the state, for example V(trading_active).
            type: str
          value:
            description: The value of O(targets[].verify.field) that means trading is halted.
            type: raw
          resumed_value:
            description: The value of O(targets[].verify.field) that means trading is active. Needed for O(state=resumed).
            type: raw
          # fragment: http_options.auth
          headers:
            description: Extra request headers. Put a secret in the token option, not here.
            type: dict
          token:
            description: A token sent in the header named by the token_header option, for example an admin token.
            type: str
          token_header:
            description: The header that carries the token. Default V(X-Admin-Token).
            type: str
          # end fragment
          wait:
            description: Seconds to keep polling for the expected state after acting. Default V(2.0).
            type: float
          # fragment: http_options.transport
          validate_certs:
            description: Validate the server's TLS certificate and host name. Default V(true).
            type: bool
          ca_path:
            description: A CA bundle (PEM) to validate the server's TLS certificate with, instead of the system's.
            type: path
          client_cert:
            description:
              - A client certificate (PEM) to present to the server (mutual TLS). It may hold the private key too.
            type: path
          client_key:
            description:
              - The private key (PEM, unencrypted) of the client certificate, when it is not in the certificate file.
            type: path
          proxy:
            description:
              - An HTTP proxy to send the requests through, for example C(http://proxy.internal:3128). HTTPS goes through it with C(CONNECT).
              - Without it, the proxy environment variables of the module's host apply (C(https_proxy), C(no_proxy)).
            type: str
          # end fragment
      methods:
        description:
          - The ordered chain of kill-switch methods. The first one that verifies wins.
          - O(targets[].methods[].type) selects the backend; the other options apply to the backend named
            in their description.
        type: list
        elements: dict
        suboptions:
          type:
            description:
              - The backend, one of V(http), V(redis), V(file), V(docker) or V(kubernetes).
            type: str
          url:
            description: (http) The kill-switch URL, for example C(http://engine:8001/api/v1/emergency/kill_switch).
            type: str
          method:
            description: (http) HTTP method of the halt request. Default V(POST).
            type: str
          # fragment: http_options.auth prefix=(http)
          headers:
            description: (http) Extra request headers. Put a secret in the token option, not here.
            type: dict
          token:
            description: (http) A token sent in the header named by the token_header option, for example an admin token.
            type: str
          token_header:
            description: (http) The header that carries the token. Default V(X-Admin-Token).
            type: str
          # end fragment
          body:
            description:
              - (http) JSON body of the halt request. When it is a dict without a C(reason) key,
                O(reason) is added.
              - "Default: a body holding only the reason."
            type: raw
          status_codes:
            description: (http) Status codes that mean the request was accepted. Default V([200, 201, 202, 204]).
            type: list
            elements: int
          resume_url:
            description: (http) URL that reverses the halt, used with O(state=resumed).
            type: str
          resume_method:
            description: (http) HTTP method of the resume request. Default V(POST).
            type: str
          resume_body:
            description: (http) JSON body of the resume request.
            type: raw
          # fragment: http_options.transport prefix=(http) prefix@validate_certs="(http, kubernetes)"
          validate_certs:
            description: (http, kubernetes) Validate the server's TLS certificate and host name. Default V(true).
            type: bool
          ca_path:
            description: (http) A CA bundle (PEM) to validate the server's TLS certificate with, instead of the system's.
            type: path
          client_cert:
            description:
              - (http) A client certificate (PEM) to present to the server (mutual TLS). It may hold the private key too.
            type: path
          client_key:
            description:
              - (http) The private key (PEM, unencrypted) of the client certificate, when it is not in the certificate file.
            type: path
          proxy:
            description:
              - (http) An HTTP proxy to send the requests through, for example C(http://proxy.internal:3128). HTTPS goes through it with C(CONNECT).
              - Without it, the proxy environment variables of the module's host apply (C(https_proxy), C(no_proxy)).
            type: str
          # end fragment
          # fragment: redis prefix=(redis)
          host:
            description: (redis) The Redis server's host name or address. Default V(127.0.0.1).
            type: str
          port:
            description: (redis) The Redis server's port. Default V(6379).
            type: int
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
          key:
            description: (redis) The halt key, for example V(emergency_halt).
            type: str
          ttl:
            description:
              - (redis) Expiry of the halt key in seconds, 1 to 366 days' worth. Default V(3600), as in the runbooks.
              - Used only with O(hold_until_resumed=false); by default the key has no expiry.
            type: int
          value:
            description: (redis) Value stored in the key. Default a JSON document with the reason and time.
            type: str
          path:
            description: (file) Absolute path of the flag file on the module's host, for example C(/tmp/EMERGENCY_STOP).
            type: path
          # fragment: docker prefix=(docker)
          container:
            description: (docker) The container's name or id.
            type: str
          docker_host:
            description: (docker) The Docker daemon's API URL. Default V(unix:///var/run/docker.sock).
            type: str
          # end fragment
          action:
            description:
              - (docker) V(flag) touches O(targets[].methods[].flag_path) inside the container; V(stop) stops it.
                Default V(flag).
              - (docker) A container that is not running (crashed, stopped) gets the flag copied into its
                filesystem, as C(docker cp) does, so that it comes back halted when it is started again.
            type: str
          flag_path:
            description: (docker) Flag file inside the container. Default V(/tmp/EMERGENCY_STOP).
            type: str
          stop_timeout:
            description: (docker) Seconds to wait for the container to stop before it is killed. Default V(10).
            type: int
          deployment:
            description: (kubernetes) The deployment to scale to zero. Its replica count is kept in an annotation for resume.
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
          verify:
            description: A status request for this method only; same options as O(targets[].verify).
            type: dict
            suboptions: *verify_suboptions
  state:
    description:
      - V(halted) stops trading on every target; V(resumed) reverses every method of each chain.
    type: str
    choices: [halted, resumed]
    default: halted
  reason:
    description: Why trading is halted; sent to HTTP kill switches and written into flags.
    type: str
    default: tradeops emergency halt
  timeout:
    description: Deadline in seconds for each target, covering every method of its chain and the verification.
    type: float
    default: 10.0
  concurrency:
    description: How many targets are worked on at the same time.
    type: int
    default: 64
  apply_all:
    description:
      - Apply every method of each chain instead of stopping at the first that verifies, skipping
        methods whose own flag is already set.
      - Use it before restarting an engine, so that the durable methods (flag file, redis key,
        container flag, scale to zero) keep it halted across the restart; an API halt held in the
        engine's memory does not survive one. The playbooks' contain phase uses it for the same reason.
      - Methods that take the engine down (C(docker) with C(action=stop), C(kubernetes) scale to zero)
        are not applied on top of a halt that already verified; they stay fallbacks.
      - Every target is first halted and verified by the first method of its chain that works; only then
        are the rest of the chains applied, so the last engine stops trading after one method per engine,
        not after the whole chain of every engine before it. Each target's O(timeout) covers both passes
        (the wait between them excepted).
    type: bool
    default: false
  durable_only:
    description:
      - Apply only the methods whose halt outlives the engine's process and reads back by itself (C(file),
        C(redis), C(docker) with C(action=flag)), each verified by reading its own flag; the engine's API (C(http)
        methods, O(targets[].verify) and O(targets[].methods[].verify)) is not called. Implies O(apply_all).
      - For an engine that is down and must come back halted, for example a container created from the previous
        image and not started yet (C(service_recovery)'s rollback). Its API cannot answer, and asking it would only
        spend O(timeout).
      - A target with no such method fails, naming it. Only with O(state=halted).
    type: bool
    default: false
  hold_until_resumed:
    description:
      - A verified halt must hold until the gated resume lifts it, never lapse by itself. With V(true)
        Redis halt keys are set B(without expiry), and every halt call, including one that finds the
        target already halted, removes an expiry a runbook or an older call set (C(PERSIST)).
      - With V(false) the keys expire after O(targets[].methods[].ttl) (the runbooks' 3600 s) and every
        halt call, including one that finds the target already halted, sets the TTL back to the full
        O(targets[].methods[].ttl). Then trading resumes by itself when the key expires, unless another
        source holds the halt; RV(targets[].expires_at) says when.
    type: bool
    default: true
  verify:
    description:
      - Read the state back after each method. With V(false) a method that answers is trusted,
        its target is reported as unverified, and the module does not fail for it. Leave it on.
    type: bool
    default: true
  quiesce:
    description:
      - Before returning, wait until this many seconds have passed since the last target this call
        halted (or resumed) was verified, so that an order an engine had in flight lands before the
        caller counts the orders written after the halt. A target found already halted, or not
        verified, is not waited for. The engines halted first in a large fan-out have already waited
        through the rest of it, so the wait is shorter than a pause after the call.
      - V(0) returns at once. At most 600 seconds; a value outside 0-600 fails the call before any
        target is touched. Not in check mode. RV(quiesced_s) says how long it waited.
    type: float
    default: 0
  quiesce_wait:
    description:
      - With V(false), return at once and leave the wait to the caller, RV(quiesce_until) saying until when. The P0
        playbook's contain phase cancels at the venue meanwhile
        (M(tradeops.remediation.venue_guard)'s O(tradeops.remediation.venue_guard#module:settle_until)) and counts
        the orders only after it.
    type: bool
    default: true
notes:
  - Every halted target reports the sources that hold its halt (RV(targets[].held_by)) and whether one
    of them survives an engine restart and never expires (RV(targets[].durable)). An API halt lives in
    the engine's memory and is lost when its supervisor restarts it, so give every target a durable
    method (flag file, Redis key, container flag) and apply the whole chain (O(apply_all=true)), as
    the playbooks' contain phase does. Targets whose halt is not durable are listed in
    RV(not_durable) and warned about.
  - O(state=resumed) runs through the module's action plugin on the controller, which refuses it
    unless M(tradeops.remediation.health_check) reported the whole stack GO earlier in the same
    C(ansible-playbook) run (a record only that run can write; no variable can supply it).
  - Runs on the host it is delegated to (normally the controller). The C(redis), C(docker) and
    C(kubernetes) methods need the Python libraries C(redis), C(docker) and C(kubernetes) there.
seealso:
  - module: tradeops.remediation.health_check
"""

EXAMPLES = r"""
- name: Halt trading on every engine in one concurrent, verified call
  tradeops.remediation.halt_trading:
    reason: "P0: order router down"
    timeout: 10
    targets:
      - name: engine-001
        verify:
          url: http://10.0.0.11:8001/api/v1/trading/status
          field: trading_active
          value: false
          resumed_value: true
        methods:
          - type: http
            url: http://10.0.0.11:8001/api/v1/emergency/kill_switch
            body: {user_id: tradeops}
            resume_url: http://10.0.0.11:8001/api/v1/emergency/resume
          - type: file
            path: /srv/engine-001/EMERGENCY_STOP
      - name: engine-002
        methods:
          - type: redis
            host: 10.0.0.20
            password: "{{ vault_redis_password }}"
            key: emergency_halt
            ttl: 3600
  run_once: true
  delegate_to: localhost
  register: halt

- name: Resume trading (only behind an approval gate)
  tradeops.remediation.halt_trading:
    state: resumed
    targets: "{{ engine_targets }}"
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
state:
  description: The requested state.
  returned: always
  type: str
  sample: halted
targets:
  description: One result per target, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The target name.
      type: str
      sample: engine-001
    status:
      description:
        - V(halted), V(already_halted), V(would_halt) (check mode), V(resumed), V(already_resumed),
          V(would_resume), V(unverified) or V(failed).
      type: str
      sample: halted
    before:
      description: State read before acting, V(trading), V(halted) or V(unknown).
      type: str
    changed:
      description: Whether a method was applied to this target.
      type: bool
    verified:
      description: Whether the read-back confirmed the requested state.
      type: bool
    method:
      description: The type of the method that verified.
      type: str
      sample: http
    verified_by:
      description: V(status) (the engine's status request) or V(flag) (the method's own flag read back).
      type: str
    methods_tried:
      description: Each method tried, with its action, verification, latency in ms and error text.
      type: list
      elements: dict
    latency_ms:
      description: Time spent on this target, in milliseconds.
      type: int
    halted_at:
      description: Epoch time at which the halt was verified.
      type: float
    held_by:
      description:
        - For halted targets, every source that holds the halt, read back after the call, with C(method),
          C(source), C(expires_at) (epoch seconds, null when it never expires) and C(survives_restart)
          (false for an API halt held in the engine's memory).
      type: list
      elements: dict
      returned: state=halted, not in check mode
    expires_at:
      description: The earliest expiry among RV(targets[].held_by), epoch seconds; null when none expires.
      type: float
      returned: state=halted, not in check mode
    durable:
      description: Whether one of RV(targets[].held_by) survives an engine restart and never expires.
      type: bool
      returned: state=halted, not in check mode
    hold_summary:
      description: RV(targets[].held_by) in words, with when the halt would lapse (never, before the gated resume, when durable).
      type: str
      returned: state=halted, not in check mode
      sample: "redis+file, until the gated resume"
    error:
      description: What went wrong, for failed and unverified targets.
      type: str
halted:
  description: Targets halted and verified by this call.
  returned: state=halted
  type: list
  elements: str
already_halted:
  description: Targets that were already halted (no change).
  returned: state=halted
  type: list
  elements: str
would_halt:
  description: Targets that would be halted (check mode).
  returned: check_mode and state=halted
  type: list
  elements: str
resumed:
  description: Targets resumed and verified by this call.
  returned: state=resumed
  type: list
  elements: str
already_resumed:
  description: Targets that were already trading (no change).
  returned: state=resumed
  type: list
  elements: str
would_resume:
  description: Targets that would be resumed (check mode).
  returned: check_mode and state=resumed
  type: list
  elements: str
failed_targets:
  description:
    - Targets on which no method could be applied (unreachable, errors, deadline, invalid options).
    - Named C(failed_targets) because C(failed) is reserved by Ansible for the task status.
  returned: always
  type: list
  elements: str
unverified:
  description: Targets on which a method was applied but the state never read back as requested.
  returned: always
  type: list
  elements: str
not_durable:
  description:
    - Halted targets whose halt would lapse by itself (every source expires, or only the engine's
      memory holds it). Give them a durable method and O(apply_all=true).
  returned: state=halted, not in check mode
  type: list
  elements: str
elapsed_ms:
  description: Wall time of the whole fan-out, in milliseconds.
  returned: always
  type: int
finished_at:
  description: When the fan-out finished (before any O(quiesce)), in epoch seconds; the incident record's time of the call.
  returned: always
  type: float
  sample: 1765000000.123
quiesced_s:
  description: Seconds waited after the fan-out for O(quiesce).
  returned: with O(quiesce) above 0 and O(quiesce_wait=true), not in check mode
  type: float
quiesce_left_s:
  description: Seconds of the quiesce left to the caller at the return (O(quiesce_wait=false)).
  returned: with O(quiesce) above 0 and O(quiesce_wait=false), not in check mode
  type: float
quiesce_until:
  description:
    - When the quiesce ends, in epoch seconds, to the millisecond (the call's return when no target was changed).
  returned: with O(quiesce) above 0, not in check mode
  type: float
  sample: 1765000000.123
ran_on_controller:
  description: The call ran in the controller's own process, not as a module (see the notes).
  returned: when it ran on the controller
  type: bool
  sample: true
"""

from ansible_collections.tradeops.remediation.plugins.module_utils._killswitch import halt_argspec, run_halt
from ansible_collections.tradeops.remediation.plugins.module_utils._module import run_module

# The suboptions of targets: each method type's options composed from its backend's option groups
# (plugins/module_utils/_http.py, _redis.py, _docker.py, _kubernetes.py) in plugins/module_utils/_killswitch.py.
ARGUMENT_SPEC = halt_argspec()


def main():
    run_module(ARGUMENT_SPEC, run_halt, "halt_trading: ")


if __name__ == "__main__":
    main()
