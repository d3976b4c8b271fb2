# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: lab
short_description: The tradeops lab (a simulated trading stack) as an inventory
version_added: 0.1.0
description:
  - Reads the state file that C(tradeops lab up) writes and puts each simulated engine in the
    group C(trading_engines), with its kill-switch configuration in the host variable
    C(halt_trading_target), in the shape the C(tradeops.remediation.halt_trading) module takes.
  - Adds the lab's PostgreSQL and Redis addresses as group variables, so roles can prove from
    the database that orders stopped.
  - When the lab runs its exchange, each engine's account there (its operations key) is the host variable
    C(venue_account), in the shape the C(tradeops.remediation.venue_guard) module takes, and at the backup exchange
    (seed 003's failover venue) C(venue_account_backup); the group variable C(tradeops_venues) names both
    exchanges (C(primary), C(backup)) with the URL each is pinged at, and C(tradeops_market_feed_restart_command)
    restarts the exchange's market-data WebSocket service (C(tradeops lab restart ws-feed)). For seed 002's key
    rotation, each engine's key store and key check (C(tradeops_venue_credential)), the command that issues new
    keys (C(tradeops_venue_key_issue_command)) and the exchange's revoke endpoint (C(tradeops_venue_key_revoke)).
  - The admin token in C(halt_trading_target) is the CURRENT one, read from the lab's secrets file
    (C(ADMIN_TOKEN) in C(secrets.env), group variable C(tradeops_lab_secrets_file)), falling back to the
    state file's C(admin_token); so playbooks keep working after a rotation. Every engine API call,
    the kill switch included, needs it.
  - Every HTTP request it describes carries the header C(X-Lab-Source) set to C(management), the simulated source the lab
    firewall always lets through (group variables C(tradeops_lab_source_header) and
    C(tradeops_lab_management_source)).
  - Each engine is also in the groups C(strategy_<strategy>), C(desk_<desk>) and C(venue_<venue>) (for example
    C(strategy_momentum), C(desk_a), C(venue_kraken)), the groups a scoped halt (C(halt_trading_scope)) can name.
  - Each engine's health probes are its detailed health, its error rate (above 5% is NO-GO, seed 000) and the
    latency of its C(/health) answer (above O(max_latency_ms) is NO-GO).
  - Each engine's model API (host variable C(tradeops_model_api)) and the probes that say its model is healthy
    (C(tradeops_model_probes), accuracy at least 0.6 and no drift, seed 000), for C(playbooks/model_degradation.yml).
  - Each engine's seed 004 status endpoint (C(GET /pnl/status) with the admin token, its C(haltReason) and P&L)
    is the host variable C(tradeops_pnl_status), read by C(playbooks/trading_halted.yml).
  - Each engine's Prometheus page as a M(tradeops.remediation.performance_profile) target (C(tradeops_metrics)) and
    its config API (C(tradeops_engine_config), the update frequency), for C(playbooks/performance_degradation.yml);
    its release link and releases directory (C(service_recovery_release_link), C(service_recovery_releases_dir)),
    for the rollback of C(playbooks/agent_failure.yml).
  - The lab's PostgreSQL, its connection pooler (pgbouncer, which the engines' orders go through) and Redis are the
    hosts C(lab-postgres), C(lab-pgbouncer) and C(lab-redis) of the group C(trading_datastores), for
    C(playbooks/db_connectivity.yml) - their connection (C(tradeops_datastore)), a probe that proves a write
    (C(tradeops_health_probes); through the pooler for C(lab-pgbouncer)), and their restart (process runtime,
    C(tradeops lab restart postgres|pgbouncer|redis)).
  - The lab's Redis streams (seed 004's C(notify.events) with its dead-letter stream, C(orchestrator.commands)) are
    the host C(lab-streams) of the group C(trading_streams), for C(playbooks/stream_backlog.yml) - their Redis
    (C(tradeops_streams_redis)), the streams (C(stream_backlog_streams)) and the command that replaces and scales
    their consumers (C(stream_backlog_consumers_command), C(tradeops lab consumers)).
  - The configuration file must end in C(tradeops_lab.yml) or C(tradeops_lab.yaml).
author:
  - tradeops SRE team (@tradeops)
options:
  plugin:
    description: The name of this plugin; must be V(tradeops.remediation.lab).
    type: str
    required: true
    choices: [tradeops.remediation.lab]
  state_file:
    description:
      - Path of the lab state file.
      - When not set, C($TRADEOPS_LAB_DIR/state.json) if that variable is set, else C(.lab/state.json)
        two directories above the inventory file (the repository root for C(inventories/lab)).
    type: path
    env:
      - name: TRADEOPS_LAB_STATE
  missing_ok:
    description:
      - When the state file does not exist, return an empty C(trading_engines) group with a
        warning instead of failing. Off by default, so a forgotten C(tradeops lab up) is loud.
    type: bool
    default: false
  max_latency_ms:
    description:
      - The latency above which an engine's answer makes its latency probe NO-GO.
      - Seed 000 calls responses above 5 s degraded. The lab's latency faults add 1.5 s to every answer,
        so the lab's bound is scaled down to 1 s; set it to a production engine's own bound.
    type: float
    default: 1000
"""

EXAMPLES = r"""
# inventories/lab/lab.tradeops_lab.yml
plugin: tradeops.remediation.lab
"""

import json
import os
import sys

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

GROUP = "trading_engines"
DATASTORE_GROUP = "trading_datastores"
STREAMS_GROUP = "trading_streams"
STREAMS_HOST = "lab-streams"
DATASTORE_HOSTS = {"postgres": "lab-postgres", "redis": "lab-redis", "pgbouncer": "lab-pgbouncer"}
EVIDENCE_GROUP = "evidence_targets"
CONTROLLER = "lab-controller"
SECRETS_FILE = "secrets.env"
SOURCE_HEADER = "X-Lab-Source"
MANAGEMENT_SOURCE = "management"
MANAGEMENT_HEADERS = {SOURCE_HEADER: MANAGEMENT_SOURCE}


def _current_admin_token(secrets_file, fallback):
    """ADMIN_TOKEN from the lab's secrets file (KEY=value lines), else ``fallback``."""
    try:
        with open(secrets_file) as fh:
            for line in fh:
                line = line.strip()
                if line.startswith("export "):
                    line = line[len("export "):].lstrip()
                key, sep, value = line.partition("=")
                if sep and key.strip() == "ADMIN_TOKEN":
                    value = value.strip()
                    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                        value = value[1:-1]
                    if value:
                        return value
    except (OSError, UnicodeDecodeError):
        pass
    return fallback


def _health_probes(engine, max_latency_ms):
    """The probes that tell whether one lab engine is healthy (seed 000: error rate above 5%, slow answers)."""
    name = engine["name"]
    base = "http://%s:%d" % (engine["host"], int(engine["port"]))
    return [
        {"name": name + "-health", "type": "http", "url": base + "/health/detailed", "field": "trading_status",
         "value": "GO", "timeout": 2, "component": name, "headers": dict(MANAGEMENT_HEADERS)},
        {"name": name + "-error-rate", "type": "metric", "url": base + "/metrics", "metric": "error_rate_ratio",
         "labels": {"engine": name}, "max": 0.05, "timeout": 2, "component": name,
         "headers": dict(MANAGEMENT_HEADERS)},
        {"name": name + "-latency", "type": "http", "url": base + "/health", "max_latency_ms": max_latency_ms,
         "timeout": 3, "component": name, "headers": dict(MANAGEMENT_HEADERS)},
    ]


def _model_probes(engine):
    """The probes that say one engine's model is healthy (seed 000: accuracy below 60 %, drift alerts)."""
    name = engine["name"]
    url = "http://%s:%d/metrics" % (engine["host"], int(engine["port"]))
    return [
        {"name": name + "-model-accuracy", "type": "metric", "url": url, "metric": "model_accuracy",
         "labels": {"engine": name}, "min": 0.6, "timeout": 2, "component": name, "headers": dict(MANAGEMENT_HEADERS)},
        {"name": name + "-model-drift", "type": "metric", "url": url, "metric": "model_drift",
         "labels": {"engine": name}, "max": 0, "timeout": 2, "component": name, "headers": dict(MANAGEMENT_HEADERS)},
    ]


def _killswitch_target(engine, admin_token):
    """The halt_trading target for one lab engine, from the methods it honours."""
    base = "http://%s:%d" % (engine["host"], int(engine["port"]))
    methods = []
    for name in engine.get("methods", []):
        if name == "killswitch_api":  # seed 001
            methods.append({
                "type": "http",
                "url": base + "/api/v1/emergency/kill_switch",
                "body": {"user_id": "tradeops"},
                "token": admin_token,
                "token_header": "X-Admin-Token",
                "headers": dict(MANAGEMENT_HEADERS),
                "resume_url": base + "/api/v1/emergency/resume",
            })
        elif name == "orchestrate_api":  # seed 004
            methods.append({
                "type": "http",
                "url": base + "/admin/orchestrate/halt",
                "token": admin_token,
                "token_header": "X-Admin-Token",
                "headers": dict(MANAGEMENT_HEADERS),
                "resume_url": base + "/admin/orchestrate/unhalt",
            })
        elif name == "redis":  # seed 003
            methods.append({"type": "redis", "key": engine.get("redis_key") or "emergency_halt", "ttl": 3600})
        elif name == "file":  # seed 002
            methods.append({"type": "file", "path": os.path.join(engine["dir"], "EMERGENCY_STOP")})
    primary = (engine.get("methods") or [None])[0]
    if primary == "orchestrate_api":
        verify = {"url": base + "/pnl/status", "field": "halted", "value": True, "resumed_value": False,
                  "token": admin_token, "token_header": "X-Admin-Token", "headers": dict(MANAGEMENT_HEADERS)}
    else:
        verify = {"url": base + "/api/v1/trading/status", "field": "trading_active", "value": False,
                  "resumed_value": True, "headers": dict(MANAGEMENT_HEADERS)}
    return {"name": engine["name"], "verify": verify, "methods": methods}


class InventoryModule(BaseInventoryPlugin):
    NAME = "tradeops.remediation.lab"

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith(
            ("tradeops_lab.yml", "tradeops_lab.yaml"))

    def _state_file(self, path):
        configured = self.get_option("state_file")
        if configured:
            return configured
        lab_dir = os.environ.get("TRADEOPS_LAB_DIR")
        if lab_dir:
            return os.path.join(lab_dir, "state.json")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(path))))
        return os.path.join(root, ".lab", "state.json")

    def _add_datastores(self, pg, rd, pb, restart_argv):
        """The lab's PostgreSQL, its pooler (pgbouncer, when the lab has one) and Redis as hosts of
        C(trading_datastores), restarted by service_recovery with C(tradeops lab restart postgres|pgbouncer|redis)
        (their process runtime) and proven by a write (through the pooler for it)."""
        self.inventory.add_group(DATASTORE_GROUP)
        connections = {
            "postgres": {"login_host": pg.get("host"), "login_port": pg.get("port"), "login_db": pg.get("dbname"),
                         "login_user": pg.get("user"), "login_password": pg.get("password")},
            "redis": {"host": rd.get("host"), "port": rd.get("port"), "db": rd.get("db", 0),
                      "password": rd.get("password")},
        }
        if pb:
            connections["pgbouncer"] = dict(connections["postgres"], login_host=pb.get("host"),
                                            login_port=pb.get("port"))
        for service, name in DATASTORE_HOSTS.items():
            if service not in connections:
                continue
            self.inventory.add_host(name, group=DATASTORE_GROUP)
            sql = service in ("postgres", "pgbouncer")
            probe = dict(connections[service], name=service, type="postgres" if sql else service, write=True,
                         timeout=5 if sql else 3)
            if sql:
                probe["connect_timeout"] = 3
            host = connections[service].get("login_host") or connections[service].get("host")
            for key, value in {
                "ansible_connection": "local",
                "ansible_host": host,
                "ansible_python_interpreter": sys.executable,
                "tradeops_datastore": dict(connections[service], kind=service),
                "tradeops_health_probes": [probe],
                "service_recovery_restart_command": list(restart_argv) + [service],
            }.items():
                self.inventory.set_variable(name, key, value)

    def _add_streams(self, rd, lab_cli, lab_dir):
        """The lab's Redis streams (seed 004's notification manager and orchestrator commands) as the host
        C(lab-streams) of C(trading_streams), whose consumers C(tradeops lab consumers) replaces and scales."""
        self.inventory.add_group(STREAMS_GROUP)
        self.inventory.add_host(STREAMS_HOST, group=STREAMS_GROUP)
        for key, value in {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "tradeops_streams_redis": {"host": rd.get("host"), "port": rd.get("port"), "db": rd.get("db", 0),
                                       "password": rd.get("password")},
            "stream_backlog_streams": [
                {"name": "notify.events", "group": "notify", "dlq": "notify.events.dlq"},
                {"name": "orchestrator.commands", "group": "orchestrator"},
            ],
            "stream_backlog_consumers_command": list(lab_cli) + ["consumers", "--dir", lab_dir],
        }.items():
            self.inventory.set_variable(STREAMS_HOST, key, value)

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        state_file = self._state_file(path)
        self.inventory.add_group(GROUP)
        if not os.path.exists(state_file):
            if self.get_option("missing_ok"):
                self.display.warning("lab state file %s not found; start the lab with `tradeops lab up`" % state_file)
                return
            raise AnsibleParserError(
                "lab state file %s not found: start the lab with `tradeops lab up` (or `make drill`), "
                "or point TRADEOPS_LAB_DIR / TRADEOPS_LAB_STATE at a running lab" % state_file)
        try:
            with open(state_file) as fh:
                state = json.load(fh)
        except (OSError, ValueError) as err:
            raise AnsibleParserError("cannot read lab state file %s: %s" % (state_file, err))

        pg = state.get("postgres") or {}
        rd = state.get("redis") or {}
        exchange = state.get("exchange") or {}
        backup = state.get("exchange_backup") or {}
        lab_dir = state.get("lab_dir") or os.path.dirname(state_file)
        secrets_file = state.get("secrets_file") or os.path.join(lab_dir, SECRETS_FILE)
        admin_token = _current_admin_token(secrets_file, state.get("admin_token"))
        self.inventory.set_variable(GROUP, "tradeops_lab", {
            "state_file": state_file, "lab_dir": state.get("lab_dir"),
        })
        self.inventory.set_variable(GROUP, "tradeops_lab_secrets_file", secrets_file)
        self.inventory.set_variable(GROUP, "tradeops_lab_source_header", SOURCE_HEADER)
        self.inventory.set_variable(GROUP, "tradeops_lab_management_source", MANAGEMENT_SOURCE)
        self.inventory.set_variable(GROUP, "tradeops_lab_postgres", {
            "login_host": pg.get("host"), "login_port": pg.get("port"), "login_db": pg.get("dbname"),
            "login_user": pg.get("user"), "login_password": pg.get("password"),
        })
        self.inventory.set_variable(GROUP, "tradeops_lab_redis", {
            "host": rd.get("host"), "port": rd.get("port"), "db": rd.get("db", 0), "password": rd.get("password"),
        })
        self.inventory.set_variable(GROUP, "tradeops_lab_stack_probes", [
            {"name": "postgres", "type": "postgres", "login_host": pg.get("host"), "login_port": pg.get("port"),
             "login_db": pg.get("dbname"), "login_user": pg.get("user"), "login_password": pg.get("password"),
             "connect_timeout": 3, "timeout": 5, "component": "postgres"},
            {"name": "redis", "type": "redis", "host": rd.get("host"), "port": rd.get("port"),
             "password": rd.get("password"), "timeout": 3, "component": "redis"},
        ])
        restart_argv = state.get("restart_argv") or ["tradeops", "lab", "restart", "--dir", lab_dir]
        # `tradeops lab` as an argv prefix, for roles that drive the lab (isolate)
        lab_cli = restart_argv[:restart_argv.index("lab") + 1] if "lab" in restart_argv else ["tradeops", "lab"]
        self.inventory.set_variable(GROUP, "tradeops_lab_cli", lab_cli)
        # Each engine writes an order every order_interval seconds: an engine that still trades after its
        # halt shows up in the orders table within a few intervals, so the halt proof need not wait longer.
        interval = float(state.get("order_interval") or 0.2)
        self.inventory.set_variable(GROUP, "tradeops_lab_order_interval", interval)

        # Evidence is captured once, on the machine that runs the lab, not 200 times over.
        self.inventory.add_group(EVIDENCE_GROUP)
        self.inventory.add_host(CONTROLLER, group=EVIDENCE_GROUP)
        for key, value in {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "evidence_log_paths": [os.path.join(lab_dir, "engines.log"), os.path.join(lab_dir, "postgres.log"),
                                   os.path.join(lab_dir, "pgbouncer.log"),
                                   os.path.join(lab_dir, "redis", "*.log"),
                                   os.path.join(lab_dir, "engines", "*", "engine.log")],
        }.items():
            self.inventory.set_variable(CONTROLLER, key, value)

        # seed 002's key rotation: the exchange issues a key per engine account and revokes the old one
        self.inventory.set_variable(GROUP, "tradeops_venue_key_issue_command", list(lab_cli) + [
            "venue-key", "--dir", lab_dir])
        if exchange.get("url"):
            self.inventory.set_variable(GROUP, "tradeops_venue_key_revoke", {
                "url": "%s/lab/keys/revoke" % exchange["url"], "header": "X-Lab-Token",
                "token": state.get("control_token"), "body_field": "credential"})
        # the exchange's market-data WebSocket service, restarted by its runtime (seed 003 P2)
        self.inventory.set_variable(GROUP, "tradeops_market_feed_restart_command", list(restart_argv) + ["ws-feed"])
        # the exchanges the engines can trade on (seed 003: ping each, fail over to the backup)
        self.inventory.set_variable(GROUP, "tradeops_venues", dict(
            (label, {"url": v.get("url"), "ping_url": "%s/0/public/Time" % v.get("url")})
            for label, v in (("primary", exchange), ("backup", backup)) if v.get("url")))
        self._add_datastores(pg, rd, state.get("pgbouncer"), restart_argv)
        self._add_streams(rd, lab_cli, lab_dir)

        # What is the same for every engine is set once, on the group: Ansible checks every value an inventory
        # sets (about 0.1 ms each), 18,000 of them at 1,000 engines.
        for key, value in (("ansible_connection", "local"), ("ansible_python_interpreter", sys.executable),
                           ("service_recovery_runtime", "process")):
            self.inventory.set_variable(GROUP, key, value)
        # Each engine's values are plain data from the state file, never templates (this plugin does not set
        # trusted_by_default): they go to the inventory itself, not through ansible-core's wrapper, whose visitor
        # only tags every value, nested ones included, with its origin. That visitor cost 2.1 s of the 2.5 s it
        # took to read a 1,000-engine lab; nothing reads those tags but an error message's location.
        data = getattr(self.inventory, "__wrapped__", self.inventory)
        for engine in state.get("engines", []):
            name = engine["name"]
            self.inventory.add_host(name, group=GROUP)
            for kind in ("strategy", "desk", "venue"):
                if engine.get(kind):
                    group = self.inventory.add_group("%s_%s" % (kind, engine[kind]))
                    self.inventory.add_host(name, group=group)
            target = _killswitch_target(engine, admin_token)
            for method in target["methods"]:
                if method["type"] == "redis":
                    method.update(host=rd.get("host"), port=rd.get("port"), db=rd.get("db", 0),
                                  password=rd.get("password"))
            host_vars = {
                "ansible_host": engine["host"],
                "tradeops_engine": {
                    "name": name, "port": engine["port"], "dir": engine["dir"], "methods": engine.get("methods", []),
                    "base_url": "http://%s:%d" % (engine["host"], int(engine["port"])),
                    "strategy": engine.get("strategy"), "desk": engine.get("desk"), "venue": engine.get("venue"),
                },
                "halt_trading_target": target,
                "tradeops_health_probes": _health_probes(engine, self.get_option("max_latency_ms")),
                # seed 000's model degradation: the model API, and the probes that say the model is healthy
                "tradeops_model_api": {
                    "base_url": "http://%s:%d" % (engine["host"], int(engine["port"])), "token": admin_token,
                    "token_header": "X-Admin-Token", "headers": dict(MANAGEMENT_HEADERS),
                },
                "tradeops_model_probes": _model_probes(engine),
                # seed 004's status endpoint: whether the engine halted itself, why, and its P&L
                "tradeops_pnl_status": {
                    "url": "http://%s:%d/pnl/status" % (engine["host"], int(engine["port"])), "token": admin_token,
                    "token_header": "X-Admin-Token", "headers": dict(MANAGEMENT_HEADERS), "timeout": 3,
                },
                "service_recovery_restart_command": list(restart_argv) + [name],
                # process runtime releases: <dir>/releases/<version>, and the link <dir>/current to the one in use
                "service_recovery_release_link": os.path.join(engine["dir"], "current"),
                "service_recovery_releases_dir": os.path.join(engine["dir"], "releases"),
                # seed 000 P2: the engine's own process metrics, and its config API (the update frequency)
                "tradeops_metrics": {
                    "name": name, "url": "http://%s:%d/metrics" % (engine["host"], int(engine["port"])),
                    "labels": {"engine": name}, "headers": dict(MANAGEMENT_HEADERS),
                },
                "tradeops_engine_config": {
                    "url": "http://%s:%d/admin/config" % (engine["host"], int(engine["port"])), "token": admin_token,
                    "token_header": "X-Admin-Token", "headers": dict(MANAGEMENT_HEADERS), "timeout": 3,
                },
            }
            if (exchange.get("accounts") or {}).get(name):
                # the engine's own key, as its deployment holds it, and the engine's check of a key (a signed
                # read-only call with it): what rotate_secret writes and tests (seed 002's key rotation)
                host_vars["tradeops_venue_credential"] = {
                    "store": {"type": "env_file", "path": os.path.join(engine["dir"], "venue.env"),
                              "key": "VENUE_API_CREDENTIAL"},
                    "test": {"url": "http://%s:%d/admin/venue/credential" % (engine["host"], int(engine["port"])),
                             "header": "X-Venue-Credential", "status": [200], "timeout": 20,
                             "headers": dict(MANAGEMENT_HEADERS)},
                }
            for var, venue in (("venue_account", exchange), ("venue_account_backup", backup)):
                account = (venue.get("accounts") or {}).get(name)
                if account:
                    # the operations team's key of the engine's account at the lab exchange (Kraken's API), and
                    # at the backup exchange (seed 003's failover venue)
                    host_vars[var] = {
                        "name": name, "exchange": "kraken", "url": venue.get("url"), "api_key": account.get("key"),
                        "secret": account.get("secret"), "account_id": account.get("account_id"),
                    }
            for key, value in host_vars.items():
                data.set_variable(name, key, value)
