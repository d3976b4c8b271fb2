"""docker_rollback_spec: what the container was created with comes along, what its image brought does not."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.tradeops.remediation.plugins.filter.runtime import docker_rollback_spec

IMAGE = {"Config": {"Env": ["PATH=/usr/bin", "ENGINE_RELEASE_DIR=/opt/r"], "Cmd": ["python3"],
                    "Labels": {"org.image": "x"}, "Healthcheck": None}}
CONTAINER = {
    "Config": {
        "Env": ["PATH=/usr/bin", "ENGINE_RELEASE_DIR=/opt/r", "ENGINE_NAME=engine-2", "DSN=a=b"],
        "Cmd": ["python3", "/opt/engine.py", "serve"],
        "Labels": {"org.image": "x", "tradeops.release.previous": "tradeops/engine:1.4.2"},
        "Healthcheck": {"Test": ["CMD", "true"], "Interval": 2000000000, "Timeout": 3000000000, "Retries": 2,
                        "StartPeriod": 10000000000},
        "StopTimeout": 10,
    },
    "HostConfig": {"NetworkMode": "tradeops-dr-net", "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 0}},
    "Mounts": [{"Type": "bind", "Source": "/src/engine.py", "Destination": "/opt/engine.py", "RW": False},
               {"Type": "volume", "Name": "data", "Destination": "/data", "RW": True}],
    "NetworkSettings": {"Networks": {"tradeops-dr-net": {"IPAMConfig": {"IPv4Address": "10.213.71.22"}}}},
}


def test_the_container_configuration_without_what_the_image_brought():
    spec = docker_rollback_spec(CONTAINER, IMAGE)
    assert spec["env"] == {"ENGINE_NAME": "engine-2", "DSN": "a=b"}
    assert spec["labels"] == {"tradeops.release.previous": "tradeops/engine:1.4.2"}
    assert spec["command"] == ["python3", "/opt/engine.py", "serve"]
    assert spec["mounts"] == [
        {"type": "bind", "source": "/src/engine.py", "target": "/opt/engine.py", "read_only": True},
        {"type": "volume", "source": "data", "target": "/data", "read_only": False},
    ]
    assert spec["networks"] == [{"name": "tradeops-dr-net", "ipv4_address": "10.213.71.22"}]
    assert spec["network_mode"] == "tradeops-dr-net" and spec["restart_policy"] == "on-failure"
    assert spec["healthcheck"] == {"test": ["CMD", "true"], "interval": "2s", "timeout": "3s", "retries": 2,
                                   "start_period": "10s"}
    assert spec["stop_timeout"] == 10


def test_an_image_default_command_is_left_to_the_previous_image():
    container = dict(CONTAINER, Config=dict(CONTAINER["Config"], Cmd=["python3"]))
    assert docker_rollback_spec(container, IMAGE)["command"] is None


def test_not_a_container_is_refused():
    with pytest.raises(AnsibleFilterError, match="expected docker_container_info's container"):
        docker_rollback_spec({"Id": "x"})
