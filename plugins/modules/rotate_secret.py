#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: rotate_secret
short_description: Rotate a secret in stages, tested, with rollback; never returns a value
version_added: 0.1.0
description:
  - "A staged rotation, as AWS Secrets Manager does it: B(1. create) the pending value (generated or
    given); B(2. set) it in the store (O(store)) under O(store.pending_key), where the servers that verify
    the secret accept it while clients keep sending O(store.key); B(3. test) it with a user-defined HTTP
    request against every server (O(test)); B(4. finish): promote it to O(store.key), the old value kept
    under O(store.previous_key) for rollback. A client that switches to the new value only ever meets
    servers that already accept it, so a rotation costs no failed call."
  - With O(staging=direct), step 2 writes the new value straight to O(store.key) (the old one under
    O(store.previous_key)), for verifiers that cannot read a pending slot. Clients that re-read the store
    may then switch before every server accepts the new value.
  - With O(revoke_previous=true) the previous value is then removed from the store (and sent to the
    O(revoke) endpoint, if any), and the test is run again - the current value must be accepted and,
    by default, the revoked one refused.
  - When the test refuses the new value, the store is put back B(exactly) as it was (the same bytes
    and owner for a file, mode O(store.mode)) and the task fails saying why. A working credential is never lost. When other
    secrets of the same file, Secret or Vault path were written meanwhile (O(secrets), or another task), this
    secret's keys are put back as they were and the others' updates are kept.
  - Values never appear in results, messages or diffs; a fingerprint does. A fingerprint is the first 12 hex
    digits of the HMAC-SHA256 of the value keyed with the installation's fingerprint key
    (O(fingerprint_key_path)), so the same value has the same fingerprint in every run that uses that key,
    while a report alone cannot confirm a guessed value. RV(fingerprint_key_id) names the key; compare
    fingerprints only between results with the same key id.
  - As a second line of defence the values of the secret being rotated (current, previous, pending, new)
    are masked wherever they occur in the output, except values shorter than 8 characters, which cannot
    be told apart from the words of a path or the digits of a fingerprint (a 1-character value would
    mangle every one). Other entries of the store are not secrets of this task and are never masked.
  - File writes are atomic (a temp file created in the same directory with O_EXCL and mode 0600, given the
    file's owner and O(store.mode), then renamed over the file), so the file is never readable by others,
    not even for a moment; the file ends mode O(store.mode) (default 0600), whatever its mode was. With
    O(backup=true) the file is copied to a mode 0600 backup before every write; RV(backup_files) lists them.
    Backups hold secrets, so remove them once the rotation is proven.
  - "B(Many secrets in one call:) O(secrets) lists them, each with the options of one rotation. They rotate
    concurrently (O(concurrency) at a time), each with the same steps and guarantees; with a grace, every
    secret is rotated first, then O(revoke_grace) is waited B(once), then every previous value is revoked.
    A secret that fails is rolled back as in the single form and does not stop the others; the task then
    fails naming each failed secret. RV(results) has one entry per secret."
  - Several secrets may live in the same file, Secret or Vault path (never under the same key). Every write
    is a read-modify-write under a lock that changes this secret's keys only, so no update is lost, between
    the secrets of one task and between two tasks or operators rotating keys of one file at once (a file
    store takes C(flock) on the file's directory). A write is refused, and that secret rolled back, when its
    own keys changed since the rotation read them (another rotation of the same secret).
author:
  - tradeops SRE team (@tradeops)
extends_documentation_fragment:
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads the store and reports what would change. Nothing is generated, written, tested or revoked.
  diff_mode:
    support: full
    details:
      - The diff shows the fingerprints of O(store.key), O(store.previous_key) (and O(store.pending_key) when
        set) before and after, never values. With O(secrets), one diff per secret, headed by its name.
  idempotent:
    support: partial
    details:
      - Rotation is a change by nature; a run with O(generate) always rotates.
      - With O(secrets), each secret on its own, as in the single form.
      - A run with O(value) equal to the current value reports C(changed=false) (unless
        O(revoke_previous=true) finds a previous value to revoke).
options:
  store:
    description:
      - Where the consumers read the secret. O(store.type) selects the backend; the other options
        apply to the types named at the start of their description.
      - Required, unless O(secrets) is given; mutually exclusive with it.
    type: dict
    suboptions: &store_suboptions
      type:
        description:
          - V(env_file) - a C(KEY=value) file; other lines, comments and the order are kept.
          - V(json) or V(yaml) - a file holding a mapping; O(store.key) is a dotted path. The file is
            re-serialised, so a YAML file loses its comments.
          - V(kubernetes) - a key of a Secret's C(data).
          - V(vault_kv2) - a key of a HashiCorp Vault KV version 2 secret, through C(hvac). Other keys are kept.
        type: str
        required: true
        choices: [env_file, json, yaml, kubernetes, vault_kv2]
      key:
        description:
          - Where the current value is, for example V(ADMIN_TOKEN) (env_file, kubernetes, vault_kv2) or
            V(engine.admin_token) (json, yaml).
        type: str
        required: true
      previous_key:
        description:
          - Where the previous value is kept during the cutover, until O(revoke_previous).
          - Default O(store.key) with V(_PREVIOUS) appended when its last part is upper case, else V(_previous).
        type: str
      pending_key:
        description:
          - Where the pending value is staged (O(staging=pending)) until it is tested and promoted. The servers
            that verify the secret must accept it; clients must not send it.
          - Default O(store.key) with V(_PENDING) appended when its last part is upper case, else V(_pending).
          - A value found there when a rotation starts was left by an unfinished one and is replaced.
        type: str
      path:
        description:
          - (env_file, json, yaml) Absolute path of the file on the host the module runs on. It must exist and be
            a regular file. A path whose last component is a symlink is refused (nothing is read or written), as
            whoever could replace the file by a symlink would choose where the secret is written. Symlinked
            directories on the way are followed.
          - (vault_kv2) Path of the secret under O(store.mount_point), for example V(trading/engine).
        type: str
      mode:
        description:
          - (env_file, json, yaml) The mode of the file after every write (and rollback), as an octal string.
          - Default V('0600'), whatever the mode of the file was. Give V('0640') (or V('0440')) for a consumer that
            reads the file through its group. Bits for others and execute bits are refused.
        type: str
      # fragment: kubernetes prefix=(kubernetes) prefix@validate_certs="(kubernetes, vault_kv2)"
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
      validate_certs:
        description: (kubernetes, vault_kv2) Validate the API server's TLS certificate. Default V(true).
        type: bool
      # end fragment
      name:
        description: (kubernetes) Name of the Secret. It must exist.
        type: str
      url:
        description:
          - (vault_kv2) The Vault URL, for example C(https://vault.internal:8200).
          - Its TLS certificate is validated unless O(store.validate_certs=false).
        type: str
      mount_point:
        description: (vault_kv2) Where the KV v2 engine is mounted.
        type: str
        default: secret
      token:
        description: (vault_kv2) A Vault token with read, create and update capabilities on the secret.
        type: str
      # fragment: http_options.transport prefix=(vault_kv2) skip=validate_certs
      ca_path:
        description: (vault_kv2) A CA bundle (PEM) to validate the server's TLS certificate with, instead of the system's.
        type: path
      client_cert:
        description:
          - (vault_kv2) A client certificate (PEM) to present to the server (mutual TLS). It may hold the private key too.
        type: path
      client_key:
        description:
          - (vault_kv2) The private key (PEM, unencrypted) of the client certificate, when it is not in the certificate file.
        type: path
      proxy:
        description:
          - (vault_kv2) An HTTP proxy to send the requests through, for example C(http://proxy.internal:3128). HTTPS goes through it with C(CONNECT).
          - Without it, the proxy environment variables of the module's host apply (C(https_proxy), C(no_proxy)).
        type: str
      # end fragment
  value: &value
    description:
      - The new value. Mutually exclusive with O(generate); without either, a value is generated with
        the defaults of O(generate).
      - When it equals the current value nothing is written and C(changed=false).
    type: str
  generate: &generate
    description: Generate the new value with Python's C(secrets) module.
    type: dict
    suboptions:
      length:
        description: Number of characters, at least 16.
        type: int
        default: 32
      alphabet:
        description: V(hex) (0-9a-f), V(urlsafe) (letters, digits, C(-) and C(_)) or V(alnum) (letters and digits).
        type: str
        default: urlsafe
        choices: [hex, urlsafe, alnum]
  test: &test
    description:
      - A request that proves a value works, sent with the value in O(test.header). It is polled every
        O(test.interval) seconds until the answer is as expected or O(test.timeout) runs out, so that
        consumers have time to reload.
      - Without it the new value is not proven, and a bad value is not rolled back.
    type: dict
    suboptions:
      url:
        description:
          - The URL, for example C(http://engine:8001/api/v1/admin/whoami). O(test.url) or O(test.urls) is required.
        type: str
      urls:
        description:
          - More URLs, one per server that verifies the secret. A value is accepted when every URL accepts it
            and refused when every URL refuses it. They are asked concurrently; a URL that has answered as
            wanted is not asked again.
        type: list
        elements: str
      concurrency:
        description: How many URLs are asked at once.
        type: int
        default: 32
      method:
        description: The HTTP method.
        type: str
        default: GET
      header:
        description: The header that carries the value.
        type: str
        default: X-Admin-Token
      headers:
        description: Other request headers (never the value itself), for example a source or routing header.
        type: dict
        default: {}
      prefix:
        description: Text put before the value in O(test.header), for example V(Bearer ).
        type: str
        default: ''
      status:
        description: The status codes that mean the value is accepted.
        type: list
        elements: int
        default: [200]
      old_must_fail:
        description:
          - After O(revoke_previous), the revoked value must be refused (any other status, or no answer).
          - Default V(true) with O(revoke_previous=true). It cannot be set without it, because until then the
            previous value is kept on purpose and still works.
        type: bool
      timeout:
        description: Seconds to wait for the expected answer; a finite number from 0.05 to 86400.
        type: float
        default: 10.0
      interval:
        description: Seconds between two tries; a finite number from 0.05 to 86400.
        type: float
        default: 0.5
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
  revoke_previous:
    description:
      - After the rotation is finished and tested, remove the previous value from the store, call
        O(revoke) if given, and test again (see O(test.old_must_fail)).
      - If the current value is refused after the revocation, the previous value is put back in the
        store (unless O(revoke) already revoked it) and the task fails.
    type: bool
    default: false
  revoke: &revoke
    description:
      - A revoke endpoint, called with O(revoke_previous=true) once the previous value is out of the store.
      - The previous value is sent in the field O(revoke.body_field) of a JSON body.
    type: dict
    suboptions:
      url:
        description: The revoke URL.
        type: str
        required: true
      method:
        description: The HTTP method.
        type: str
        default: POST
      header:
        description: The header that authenticates the call.
        type: str
        default: X-Admin-Token
      prefix:
        description: Text put before the token in O(revoke.header).
        type: str
        default: ''
      token:
        description: The token that authenticates the call. Default the new value.
        type: str
      body_field:
        description: The JSON body field that carries the value to revoke.
        type: str
        default: token
      status:
        description: The status codes that mean the value was revoked.
        type: list
        elements: int
        default: [200, 201, 202, 204]
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
  staging:
    description:
      - V(pending) - step 2 stages the new value under O(store.pending_key); it is promoted to O(store.key)
        only once O(test) proves every server accepts it.
      - V(direct) - step 2 writes the new value to O(store.key) and the old one to O(store.previous_key).
      - With O(secrets), the default of each secret's O(secrets[].staging).
    type: str
    choices: [pending, direct]
    default: pending
  secrets:
    description:
      - Many secrets to rotate in this one call, concurrently, instead of one O(store). Each item takes the
        options of the single form (O(store), O(value) or O(generate), O(test), O(staging),
        O(revoke_previous), O(revoke), O(backup)) plus a O(secrets[].name). O(revoke_grace), O(revoke_only),
        O(timeout) and O(concurrency) apply to every item.
      - Mutually exclusive with O(store), O(value), O(generate), O(test) and O(revoke).
    type: list
    elements: dict
    suboptions:
      name:
        description: A label for the secret, used in RV(results) and messages. Unique within O(secrets).
        type: str
        required: true
      store:
        description:
          - Where the consumers read this secret, as O(store). Secrets may share a file, Secret or Vault
            path, but not a key.
        type: dict
        required: true
        suboptions: *store_suboptions
      value: *value
      generate: *generate
      test: *test
      revoke: *revoke
      staging:
        description: As O(staging). Default O(staging).
        type: str
        choices: [pending, direct]
      revoke_previous:
        description: As O(revoke_previous). Default O(revoke_previous).
        type: bool
      backup:
        description: As O(backup). Default O(backup).
        type: bool
  concurrency:
    description: With O(secrets), how many secrets are rotated at once.
    type: int
    default: 8
  revoke_grace:
    description:
      - Seconds to wait between the finish and O(revoke_previous), so that clients that re-read the store on
        their own schedule switch to the new value before the old one stops working. Set it to the longest
        client refresh interval for a routine rotation; V(0) in a breach, where the old value is compromised.
      - With O(secrets), waited once for all of them, after the last one is promoted.
      - A finite number from 0 to 86400.
    type: float
    default: 0
  revoke_only:
    description:
      - Create no new value; only revoke the previous one (as O(revoke_previous) does) after O(revoke_grace),
        then run the test. The second pass of a routine rotation of many secrets, after one grace period
        for them all. Nothing changes when the store holds no previous value.
      - Mutually exclusive with O(value) and O(generate).
    type: bool
    default: false
  backup:
    description:
      - (env_file, json, yaml) Copy the file to a mode 0600 backup next to it before every write.
      - With O(secrets), the default of each secret's O(secrets[].backup).
    type: bool
    default: true
  timeout:
    description:
      - Deadline in seconds for the store operations of each step (the test has O(test.timeout)), including
        the wait for the store's lock while other secrets of the same file, Secret or Vault path are written.
      - A finite number from 0.05 to 86400; V(inf), V(nan) and negative values are refused.
    type: float
    default: 30.0
  fingerprint_key_path:
    description:
      - The file holding the installation's fingerprint key, on the host the module runs on. The key makes the
        fingerprints in results and diffs (HMAC-SHA256, see the description) and never appears in the output.
      - Created on first use with 32 random bytes (hex), mode 0600, its directory 0700. In check mode a missing key
        is not created; the run uses a one-off key (RV(fingerprint_key_id) V(one-off)), so its fingerprints cannot
        be compared with other runs.
      - It must be a regular file (not a symlink) of the user running the module, readable by that user only.
        For fingerprints that agree across hosts, install the same key file on each host the module runs on.
      - Default the environment variable E(TRADEOPS_FINGERPRINT_KEY_PATH) of the module's host, else
        C(~/.ansible/tradeops/fingerprint.key) of the user running the module.
    type: path
notes:
  - Runs on the host the task runs on; file stores are files of that host. The V(kubernetes) store needs
    the Python library C(kubernetes) and the V(vault_kv2) store C(hvac) there.
  - Two tasks or operators rotating keys of the same file concurrently are serialized by C(flock) on the
    file's directory, so the directory must be on a file system that supports it (not every NFS does).
  - For a rotation without failed calls the servers that verify the secret must accept O(store.key),
    O(store.previous_key) and O(store.pending_key) and re-read the store on change (or be notified by a
    handler), and O(revoke_grace) must cover the clients' refresh interval.
  - A Vault KV v2 write is a new version with check-and-set, and so is a rollback, which writes the old data
    back as the newest version. A Kubernetes write is a patch guarded by the Secret's resourceVersion.
requirements:
  - hvac (for the vault_kv2 store)
  - kubernetes (for the kubernetes store)
seealso:
  - module: tradeops.remediation.health_check
  - name: community.hashi_vault.vault_kv2_write
    description: Writes KV v2 secrets; the vault_kv2 store follows it (hvac, check-and-set).
    link: https://docs.ansible.com/ansible/latest/collections/community/hashi_vault/vault_kv2_write_module.html
"""

EXAMPLES = r"""
- name: Rotate the engines' admin token in their env file, tested, then revoke the old one
  tradeops.remediation.rotate_secret:
    store:
      type: env_file
      path: /etc/trading/engine.env
      key: ADMIN_TOKEN
    generate:
      length: 48
      alphabet: urlsafe
    test:
      urls:
        - http://10.0.0.11:8001/api/v1/admin/whoami
        - http://10.0.0.12:8001/api/v1/admin/whoami
      header: X-Admin-Token
      status: [200]
    revoke_previous: true
    revoke_grace: 2
  register: rotation
  notify: Reload engines

- name: Set a provided value in a Kubernetes Secret (changed=false if it already holds it)
  tradeops.remediation.rotate_secret:
    store:
      type: kubernetes
      namespace: trading
      name: engine-secrets
      key: admin-token
    value: "{{ new_admin_token }}"

- name: Rotate a database password kept in Vault KV v2
  tradeops.remediation.rotate_secret:
    store:
      type: vault_kv2
      url: https://vault.internal:8200
      token: "{{ vault_token }}"
      mount_point: secret
      path: trading/engine
      key: db_password
    generate:
      length: 32
      alphabet: alnum
  delegate_to: localhost

- name: Rotate two secrets of different stores, each tested, in one call
  tradeops.remediation.rotate_secret:
    secrets:
      - name: admin token
        store: {type: env_file, path: /etc/trading/engine.env, key: ADMIN_TOKEN}
        test:
          url: http://10.0.0.11:8001/api/v1/admin/whoami
        revoke_previous: true
      - name: db password
        store: {type: vault_kv2, url: "https://vault.internal:8200", token: "{{ vault_token }}",
                path: trading/engine, key: db_password}
        generate: {length: 32, alphabet: alnum}
  register: rotations
"""

RETURN = r"""
results:
  description:
    - With O(secrets), one entry per secret, in the order given, never a value. Besides C(name), C(failed)
      and C(msg), each entry has the keys the single form returns (RV(stage), RV(fingerprint_key_id), RV(fingerprint),
      RV(previous_fingerprint), RV(pending_fingerprint), RV(revoked_fingerprint), RV(rolled_back), RV(store),
      RV(steps), RV(backup_files)) and C(changed).
  returned: with O(secrets)
  type: list
  elements: dict
  sample: [{name: admin token, changed: true, failed: false, msg: "rotated: fingerprint 3f0a9c1be27d",
            stage: finished, fingerprint: 3f0a9c1be27d, previous_fingerprint: 9b1c0e4f2a77, rolled_back: false}]
  contains:
    name:
      description: The secret's O(secrets[].name).
      type: str
    failed:
      description: Whether this secret failed (it is then rolled back, or its C(msg) says where it stopped).
      type: bool
    msg:
      description: What happened to this secret and, when it failed, what to do next.
      type: str
stage:
  description:
    - V(finished) (rotated and, with O(test), proven), V(revoked) (and the previous value revoked),
      V(unchanged) (O(value) already current), V(would_rotate) or V(would_revoke) (check mode),
      or V(rolled_back) (on failure).
  returned: without O(secrets)
  type: str
  sample: revoked
fingerprint_key_id:
  description:
    - An id of the fingerprint key (O(fingerprint_key_path)), never the key. Fingerprints are comparable between
      results with the same id only. V(one-off) in check mode before the key exists.
  returned: always (with O(secrets), in each entry of RV(results))
  type: str
  sample: 5c2e91d0
fingerprint:
  description:
    - Fingerprint of the current value in the store - the first 12 hex digits of HMAC-SHA256(key, value) with the
      key of O(fingerprint_key_path) - or V(null) when the store holds none. The same value gives the same
      fingerprint in every run with the same RV(fingerprint_key_id); without the key a guessed value cannot be
      confirmed from it.
  returned: without O(secrets)
  type: str
  sample: 3f0a9c1be27d
previous_fingerprint:
  description: Fingerprint of the value kept under O(store.previous_key), or V(null) when there is none.
  returned: without O(secrets)
  type: str
  sample: 9b1c0e4f2a77
pending_fingerprint:
  description: Fingerprint of the value this run set, or V(null) (nothing rotated, or generated in check mode).
  returned: without O(secrets)
  type: str
  sample: 3f0a9c1be27d
revoked_fingerprint:
  description: Fingerprint of the value revoked by O(revoke_previous), or V(null).
  returned: without O(secrets)
  type: str
  sample: 9b1c0e4f2a77
rolled_back:
  description: Whether the store was put back as it was after a failed test.
  returned: without O(secrets)
  type: bool
  sample: false
store:
  description: The store, as C(type), C(location), C(key), C(previous_key) and C(pending_key).
  returned: without O(secrets)
  type: dict
  sample: {type: env_file, location: env_file /etc/trading/engine.env, key: ADMIN_TOKEN,
           previous_key: ADMIN_TOKEN_PREVIOUS, pending_key: ADMIN_TOKEN_PENDING}
steps:
  description:
    - One entry per step (V(create), V(set), V(test), V(finish), V(rollback), V(grace), V(revoke), V(retest)),
      each with C(step), C(status) (V(ok), V(failed) or V(skipped)) and C(message).
  returned: without O(secrets)
  type: list
  elements: dict
  sample: [{step: test, status: ok, message: "the new value is accepted: GET http://engine/whoami answered HTTP 200"}]
backup_files:
  description: The 0600 backups made before each write (file stores with O(backup=true)).
  returned: without O(secrets)
  type: list
  elements: str
  sample: [/etc/trading/engine.env.20250101T120000.000001.4242.bak]
"""

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.tradeops.remediation.plugins.module_utils import _http, _kubernetes
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import check_timeout
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._secrets import (
    STORE_TYPES,
    BatchRotation,
    Fingerprinter,
    RotationFailed,
    RotationService,
    build_store,
)

STORE_SPEC = dict(
    type=dict(type="str", required=True, choices=list(STORE_TYPES)),
    key=dict(type="str", required=True, no_log=False),
    previous_key=dict(type="str", no_log=False),
    pending_key=dict(type="str", no_log=False),
    path=dict(type="str"),
    mode=dict(type="str"),
    # kubernetes: the Secret's name, and the backend's options (plugins/module_utils/_kubernetes.py)
    name=dict(type="str"),
    **_kubernetes.argspec(
        # vault_kv2, and the HTTP backend's transport options (plugins/module_utils/_http.py)
        url=dict(type="str"),
        mount_point=dict(type="str", default="secret"),
        token=dict(type="str", no_log=True),
        **_http.argspec("transport")
    )
)

TEST_SPEC = dict(
    url=dict(type="str"),
    urls=dict(type="list", elements="str"),
    concurrency=dict(type="int", default=32),
    method=dict(type="str", default="GET"),
    header=dict(type="str", default="X-Admin-Token"),
    headers=dict(type="dict", default={}),
    prefix=dict(type="str", default=""),
    status=dict(type="list", elements="int", default=[200]),
    old_must_fail=dict(type="bool"),
    timeout=dict(type="float", default=10.0),
    interval=dict(type="float", default=0.5),
    **_http.argspec("transport")
)

REVOKE_SPEC = dict(
    url=dict(type="str", required=True),
    method=dict(type="str", default="POST"),
    header=dict(type="str", default="X-Admin-Token"),
    prefix=dict(type="str", default=""),
    token=dict(type="str", no_log=True),
    body_field=dict(type="str", default="token"),
    status=dict(type="list", elements="int", default=[200, 201, 202, 204]),
    **_http.argspec("transport")
)

# The options of ONE secret: the single form's, and each item of ``secrets``.
# Which options each store type needs: Ansible reports a missing one before any code runs.
STORE_REQUIRED_IF = [
    ("type", "env_file", ("path",)),
    ("type", "json", ("path",)),
    ("type", "yaml", ("path",)),
    ("type", "kubernetes", ("name",)),
    ("type", "vault_kv2", ("url", "path", "token")),
]

SECRET_SPEC = dict(
    store=dict(type="dict", options=STORE_SPEC, required_if=STORE_REQUIRED_IF),
    value=dict(type="str", no_log=True),
    generate=dict(type="dict", options=dict(
        length=dict(type="int", default=32),
        alphabet=dict(type="str", default="urlsafe", choices=["hex", "urlsafe", "alnum"]),
    )),
    test=dict(type="dict", options=TEST_SPEC, required_one_of=[("url", "urls")]),
    staging=dict(type="str", default="pending", choices=["pending", "direct"]),
    revoke_previous=dict(type="bool", default=False),
    revoke=dict(type="dict", options=REVOKE_SPEC),
    backup=dict(type="bool", default=True),
)
# In an item of ``secrets`` these default to the module's option of the same name (a batch-wide default).
INHERITED = ("staging", "revoke_previous", "backup")
# Per-secret options that only the single form takes at the top level.
PER_SECRET = ("store", "value", "generate", "test", "revoke")


def _item_spec():
    spec = dict(name=dict(type="str", required=True))
    for option, option_spec in SECRET_SPEC.items():
        option_spec = dict(option_spec)
        if option in INHERITED:
            option_spec.pop("default", None)
        spec[option] = option_spec
    spec["store"]["required"] = True
    return spec


ARGUMENT_SPEC = dict(
    SECRET_SPEC,
    secrets=dict(type="list", elements="dict", options=_item_spec(), no_log=False,
                 mutually_exclusive=[("value", "generate")]),
    concurrency=dict(type="int", default=8),
    revoke_grace=dict(type="float", default=0.0),
    revoke_only=dict(type="bool", default=False),
    timeout=dict(type="float", default=30.0),
    fingerprint_key_path=dict(type="path", no_log=False, fallback=(env_fallback, ["TRADEOPS_FINGERPRINT_KEY_PATH"])),
)


def _fingerprinter(module):
    """The installation's keyed fingerprints (the key file is created on first use, not in check mode)."""
    return Fingerprinter.from_file(module.params["fingerprint_key_path"], create=not module.check_mode)


def _service(secret, params, check_mode, fingerprint):
    """A RotationService for one secret's options (``secret``) and the batch-wide ones (``params``)."""
    store = build_store(secret["store"], backup=secret["backup"], fingerprint=fingerprint)
    return RotationService(
        store,
        value=secret["value"],
        generate=secret["generate"],
        test=secret["test"],
        revoke_previous=secret["revoke_previous"],
        revoke=secret["revoke"],
        timeout=params["timeout"],
        check_mode=check_mode,
        staging=secret["staging"],
        revoke_grace=params["revoke_grace"],
        revoke_only=params["revoke_only"],
    )


def run_single(module):
    p = module.params
    service = None
    try:
        service = _service(p, p, module.check_mode, _fingerprinter(module))
        result = service.run()
    except ValidationError as err:
        module.fail_json(msg="rotate_secret: %s. Nothing was changed: fix the options and re-run." % err)
    except RotationFailed as err:
        # every value seen is masked in the output too, as a second line of defence
        module.no_log_values.update(service.secret_values())
        failed = err.result
        failed.pop("diff", None)
        failed["msg"] = "rotate_secret: %s" % err
        module.fail_json(**failed)
    except TradeopsError as err:
        module.fail_json(msg="rotate_secret: %s" % err)

    module.no_log_values.update(service.secret_values())
    diff = result.pop("diff", None)
    if module._diff and diff:
        result["diff"] = diff
    module.exit_json(**result)


def run_batch(module):
    p = module.params
    services = []
    try:
        # the batch-wide options first, so that an error names them and not the first secret
        check_timeout(p["timeout"], "timeout")
        check_timeout(p["revoke_grace"], "revoke_grace", minimum=0.0)
        fingerprint = _fingerprinter(module)
        for i, item in enumerate(p["secrets"]):
            secret = dict(item)
            for option in INHERITED:
                if secret[option] is None:
                    secret[option] = p[option]
            try:
                services.append((item["name"], _service(secret, p, module.check_mode, fingerprint)))
            except ValidationError as err:
                raise ValidationError("secrets[%d] (%s): %s" % (i, item["name"], err))
        batch = BatchRotation(services, concurrency=p["concurrency"], revoke_grace=p["revoke_grace"],
                              check_mode=module.check_mode)
    except ValidationError as err:
        module.fail_json(msg="rotate_secret: %s. Nothing was changed: fix the options and re-run." % err)
    except TradeopsError as err:
        module.fail_json(msg="rotate_secret: %s. Nothing was changed." % err)

    results, diffs, failed = batch.run()
    # every value seen is masked in the output too, as a second line of defence
    module.no_log_values.update(batch.secret_values())
    out = dict(changed=any(r["changed"] for r in results), results=results)
    if module._diff and diffs:
        out["diff"] = diffs
    if failed:
        done = len(results) - len(failed)
        module.fail_json(msg="rotate_secret: %d of %d secrets failed (%s); the %d other(s) completed. %s "
                             "Fix each as its message says, then re-run with only the failed secrets (a re-run "
                             "of the others would rotate them again)."
                             % (len(failed), len(results), ", ".join(r["name"] for r in failed), done,
                                " ".join("[%s] %s" % (r["name"], r["msg"]) for r in failed)), **out)
    module.exit_json(**out)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_one_of=[("store", "secrets")],
                           mutually_exclusive=[("value", "generate")] + [(o, "secrets") for o in PER_SECRET])
    if module.params["secrets"] is None:
        run_single(module)
    else:
        run_batch(module)


if __name__ == "__main__":
    main()
