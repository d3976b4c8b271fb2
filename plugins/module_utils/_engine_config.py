# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``engine_config``: read, and set with a read-back, a setting of every engine's config API, the fleet in one call.

Seed 003's failover (``activate_failover('binance', 'bybit')``: the engines trade on the backup venue), seed 000's
rate-limit answers (back-off, cached market data) and seed 000's "reduce update frequency" are each a setting of the
engine's configuration. Each target is read (``GET``); one whose values differ gets a ``POST`` of ``set`` and must
answer with them; then it is read again, so a setting the engine did not keep is a failure, not a success.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.tradeops.remediation.plugins.module_utils import _http
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import check_timeout, fan_out
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import number

TARGET_KEYS = ("name", "url", "token", "token_header", "headers", "timeout", "validate_certs", "ca_path",
               "client_cert", "client_key", "proxy")


class Target(object):
    __slots__ = ("name", "url", "client", "timeout")

    def __init__(self, spec, index, default_timeout):
        where = "targets[%d]" % index
        if not isinstance(spec, dict):
            raise ValidationError("%s must be a dict with name and url, got %r" % (where, type(spec).__name__))
        self.name = spec.get("name") or ("#%d" % index)
        where = "%s (%s)" % (where, self.name)
        if not spec.get("url"):
            raise ValidationError("%s: url is required (the engine's config API, for example "
                                  "http://engine-001:8080/admin/config)" % where)
        _http.check_url(spec["url"], "%s: url" % where)
        self.url = spec["url"]
        options = dict((k, v) for k, v in spec.items() if k in TARGET_KEYS)
        self.client = _http.client(_http.http_options(options, where))
        self.timeout = check_timeout(spec.get("timeout") or default_timeout, "%s: timeout" % where)


def _differs(current, wanted):
    return dict((k, v) for k, v in wanted.items() if (current or {}).get(k) != v)


class EngineConfigService(object):
    def __init__(self, params, check_mode=False):
        targets = params.get("targets") or []
        if not targets:
            raise ValidationError("targets: name at least one engine (name and url of its config API)")
        self.timeout = check_timeout(10 if params.get("timeout") is None else params["timeout"], "timeout")
        self.targets = [Target(t, i, self.timeout) for i, t in enumerate(targets)]
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            twice = sorted(n for n in names if names.count(n) > 1)[0]
            raise ValidationError("targets: each engine once (%s twice)" % twice)
        self.wanted = params.get("set") or {}
        if not isinstance(self.wanted, dict):
            raise ValidationError("set must be a dict of setting to value, got %r" % (self.wanted,))
        self.concurrency = number(params.get("concurrency"), "concurrency", integer=True, minimum=1, maximum=256,
                                  default=20)
        self.check_mode = bool(check_mode)

    def _one(self, target, deadline):
        row = {"name": target.name, "before": None, "after": None, "changed": False, "ok": False, "error": None}
        row["before"] = self._read(target, deadline)
        differs = _differs(row["before"], self.wanted)
        if differs and self.check_mode:
            row.update(changed=True, would_set=differs, ok=True, after=row["before"])
            return row
        if differs:
            resp = target.client.request(target.url, "POST", differs, deadline=deadline, cap=target.timeout)
            if resp.status >= 300:
                raise BackendError("POST %s: HTTP %d: %s" % (_http.safe_url(target.url), resp.status, resp.text()))
            row["changed"] = True
        row["after"] = self._read(target, deadline)
        still = _differs(row["after"], self.wanted)
        if still:
            raise BackendError("the engine did not keep %s (it reads back %s)" % (
                still, dict((k, (row["after"] or {}).get(k)) for k in still)))
        row["ok"] = True
        return row

    @staticmethod
    def _read(target, deadline):
        resp = target.client.request(target.url, "GET", deadline=deadline, cap=target.timeout)
        if resp.status != 200:
            raise BackendError("GET %s: HTTP %d: %s" % (_http.safe_url(target.url), resp.status, resp.text()))
        try:
            body = resp.json()
        except ValueError:
            raise BackendError("GET %s: the answer is not JSON" % _http.safe_url(target.url))
        if not isinstance(body, dict):
            raise BackendError("GET %s: the answer is not a JSON object" % _http.safe_url(target.url))
        return body

    def run(self):
        def failed(target, elapsed, exc):
            error = str(exc) if exc is not None else "no answer within %.1fs" % (elapsed or self.timeout)
            return {"name": target.name, "before": None, "after": None, "changed": False, "ok": False,
                    "error": error}

        rows = fan_out(self.targets, self._one, self.concurrency, self.timeout, failed)
        bad = [r for r in rows if not r["ok"]]
        return {
            "engines": rows,
            "changed": any(r["changed"] for r in rows),
            "set": self.wanted,
            "failed": [r["name"] for r in bad],
            "status": "NO-GO" if bad else "GO",
            "problems": ["%s: %s" % (r["name"], r["error"]) for r in bad],
        }
