# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Roll a docker container back to its previous image with the configuration it was created with."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

NS = 1000000000


def _seconds(ns):
    return None if not ns else "%ds" % max(1, int(round(float(ns) / NS)))


def docker_rollback_spec(container, image=None):
    """The ``community.docker.docker_container`` options that recreate ``container`` (``docker_container_info``'s
    ``container``) as it was created: its command, the environment and labels it was given (the image's own
    ``ENV`` and ``LABEL`` entries left out, so that the previous image brings its own), its mounts, networks with
    their fixed addresses, healthcheck, restart policy and stop timeout. ``image`` is ``docker_image_info``'s
    entry of the container's current image."""
    if not isinstance(container, dict) or "Config" not in container:
        raise AnsibleFilterError("docker_rollback_spec: expected docker_container_info's container, got %r"
                                 % (type(container).__name__,))
    config = container.get("Config") or {}
    host = container.get("HostConfig") or {}
    image_config = ((image or {}).get("Config") or {})
    image_env = set(image_config.get("Env") or [])
    env = {}
    for item in config.get("Env") or []:
        if item in image_env:
            continue
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    image_labels = image_config.get("Labels") or {}
    labels = dict((k, v) for k, v in (config.get("Labels") or {}).items() if image_labels.get(k) != v)
    mounts = []
    for m in container.get("Mounts") or []:
        if m.get("Type") == "bind":
            mounts.append({"type": "bind", "source": m["Source"], "target": m["Destination"],
                           "read_only": not m.get("RW", True)})
        elif m.get("Type") == "volume" and m.get("Name"):
            mounts.append({"type": "volume", "source": m["Name"], "target": m["Destination"],
                           "read_only": not m.get("RW", True)})
    networks = []
    for name, net in sorted(((container.get("NetworkSettings") or {}).get("Networks") or {}).items()):
        entry = {"name": name}
        ipam = net.get("IPAMConfig") or {}
        if ipam.get("IPv4Address"):
            entry["ipv4_address"] = ipam["IPv4Address"]
        networks.append(entry)
    spec = {
        "command": config.get("Cmd") if config.get("Cmd") != image_config.get("Cmd") else None,
        "env": env,
        "labels": labels,
        "mounts": mounts,
        "networks": networks,
        "network_mode": host.get("NetworkMode") or None,
        "restart_policy": ((host.get("RestartPolicy") or {}).get("Name") or "no"),
        "restart_retries": (host.get("RestartPolicy") or {}).get("MaximumRetryCount") or None,
        "stop_timeout": config.get("StopTimeout"),
        "healthcheck": None,
    }
    check = config.get("Healthcheck")
    if check and check != image_config.get("Healthcheck"):
        spec["healthcheck"] = dict((k, v) for k, v in {
            "test": check.get("Test"), "interval": _seconds(check.get("Interval")),
            "timeout": _seconds(check.get("Timeout")), "retries": check.get("Retries"),
            "start_period": _seconds(check.get("StartPeriod")),
        }.items() if v is not None)
    if spec["restart_policy"] not in ("on-failure",):
        spec["restart_retries"] = None
    return spec


class FilterModule(object):
    def filters(self):
        return {"docker_rollback_spec": docker_rollback_spec}
