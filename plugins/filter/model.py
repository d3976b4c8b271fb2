# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Model degradation (seed 000): the probe that proves an engine trades on paper."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

KEPT = ("url", "labels", "headers", "timeout", "token", "token_header", "validate_certs", "ca_path")


def paper_probes(hosts, hostvars, var="tradeops_model_probes", metric="paper_trading"):
    """For each host, a metric probe that is GO only while the engine trades on paper (``metric`` at least 1),
    read from the same metrics endpoint as the host's model probes (host variable ``var``)."""
    probes = []
    for host in hosts or []:
        try:
            model_probes = hostvars[host].get(var) or []
        except KeyError:
            raise AnsibleFilterError("paper_probes: host %r is not in hostvars" % host)
        source = next((p for p in model_probes if isinstance(p, dict) and p.get("type") == "metric"), None)
        if source is None:
            raise AnsibleFilterError("paper_probes: %s.%s has no metric probe to read %s from" % (host, var, metric))
        probe = dict((k, v) for k, v in source.items() if k in KEPT)
        probe.update(name=host + "-paper", type="metric", metric=metric, min=1, component=host)
        probes.append(probe)
    return probes


class FilterModule(object):
    def filters(self):
        return {"paper_probes": paper_probes}
