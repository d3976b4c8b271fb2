"""The docker kill-switch method (``DockerMethod``) against the real Docker engine, below Molecule (issue 14).

Each test starts its own container of the drills' base image (``tradeops/base:current``, built offline by
scripts/images.sh through the ``drill_images`` fixture; nothing is pulled) running a process that keeps
running, drives the method through its public calls only (halt, read_flag, hold, resume) and checks the
outcome from outside, as a user would: ``docker exec`` (``exec_run``) in the container, ``docker inspect``,
``docker restart``/``start``/``kill``. Without a Docker daemon these tests FAIL (``drill_images`` says why);
they never skip.
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import Deadline
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._killswitch import (
    DockerMethod,
    HaltService,
    build_targets,
)

from tests.integration.lab.helpers import wait_until

pytestmark = pytest.mark.integration

DOCKER_SOCKET = "unix:///var/run/docker.sock"
PREFIX = "tradeops-test-dockermethod-"
WHERE = "targets[0] (engine): methods[0]"
FLAG = "/tmp/EMERGENCY_STOP"
REASON = "P0: order router down (dockermethod test)"
# An engine that exits on SIGTERM, as a real one does (a bare `sleep infinity` as PID 1 ignores it and
# every stop or restart would wait for the kill timeout).
KEEP_RUNNING = ["sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"]
DEADLINE = 20.0


@pytest.fixture(scope="module")
def docker_client(drill_images):
    import docker

    client = docker.DockerClient(base_url=DOCKER_SOCKET, timeout=60)
    yield client
    client.close()


@pytest.fixture
def engine(docker_client, drill_images):
    """A running container of the base image with a unique name, removed at teardown even when the test
    fails. Returns a factory so a test may start more than one; each call returns the container object."""
    started = []

    def start():
        name = PREFIX + uuid.uuid4().hex[:12]
        container = docker_client.containers.run(drill_images["base"], KEEP_RUNNING, name=name, detach=True,
                                                 labels={"tradeops.test": "dockermethod"})
        started.append(container)
        wait_until(lambda: status(container) == "running", 30, f"{name} to run")
        return container

    yield start
    for container in started:
        try:
            container.remove(force=True)
        except Exception as err:  # noqa: BLE001 - a teardown must try every container
            print(f"could not remove {container.name}: {err}")


def status(container) -> str:
    """The container's State.Status as `docker inspect` shows it."""
    return container.client.api.inspect_container(container.id)["State"]["Status"]


def flag_exists(container) -> bool:
    """`docker exec <c> test -e FLAG`: 0 when the flag is there, 1 when it is not (anything else fails)."""
    code = container.exec_run(["test", "-e", FLAG]).exit_code
    assert code in (0, 1), f"test -e {FLAG} in {container.name} exited {code}"
    return code == 0


def flag_content(container) -> str:
    result = container.exec_run(["cat", FLAG])
    assert result.exit_code == 0, f"cat {FLAG} in {container.name}: {result.output!r}"
    return result.output.decode("utf-8")


def assert_flag_records(content: str, reason: str) -> None:
    """The flag file is the JSON document a user reading it finds: the reason, when and by whom."""
    assert content.strip(), f"the flag {FLAG} is empty: it does not say why trading was halted"
    doc = json.loads(content)
    assert doc["reason"] == reason, doc
    assert doc["by"] == "tradeops.remediation.halt_trading", doc
    assert abs(doc["at"] - time.time()) < 300, doc


def method(container, **options) -> DockerMethod:
    return DockerMethod(dict({"type": "docker", "container": container.name}, **options), WHERE)


# --------------------------------------------------------------------------------------------------- action flag
def test_flag_in_a_running_container_survives_docker_restart_until_resume_removes_it(engine):
    container = engine()
    m = method(container, action="flag", flag_path=FLAG)
    assert m.read_flag(Deadline(DEADLINE)) is False
    assert not flag_exists(container)

    m.halt(REASON, Deadline(DEADLINE))
    assert flag_exists(container)
    assert m.read_flag(Deadline(DEADLINE)) is True
    hold = m.hold(Deadline(DEADLINE))
    assert hold is not None and hold["survives_restart"] is True, hold
    assert container.name in hold["source"] and FLAG in hold["source"], hold

    container.restart(timeout=10)
    wait_until(lambda: status(container) == "running", 30, f"{container.name} to run again after docker restart")
    assert flag_exists(container), "the flag did not survive docker restart"
    assert m.read_flag(Deadline(DEADLINE)) is True

    m.resume(Deadline(DEADLINE))
    assert not flag_exists(container)
    assert m.read_flag(Deadline(DEADLINE)) is False
    assert m.hold(Deadline(DEADLINE)) is None


def test_halt_copies_the_flag_into_a_stopped_container_and_the_engine_finds_it_on_start(engine):
    """A crashed engine (killed, exited 137) cannot run docker exec: halt copies the flag in, so the engine
    starts halted."""
    container = engine()
    container.kill()
    wait_until(lambda: status(container) == "exited", 30, f"{container.name} to exit after docker kill")
    m = method(container, flag_path=FLAG)
    assert m.read_flag(Deadline(DEADLINE)) is False

    result = m.halt(REASON, Deadline(DEADLINE))
    assert "copied" in result, result
    assert status(container) == "exited", "halt must not start the stopped container"
    assert m.read_flag(Deadline(DEADLINE)) is True  # read back from the stopped container (docker cp)
    hold = m.hold(Deadline(DEADLINE))
    assert hold is not None and hold["survives_restart"] is True, hold

    container.start()
    wait_until(lambda: status(container) == "running", 30, f"{container.name} to run after docker start")
    assert flag_exists(container), "the flag copied into the stopped container is not there once it runs"
    assert_flag_records(flag_content(container), REASON)
    assert m.read_flag(Deadline(DEADLINE)) is True

    m.resume(Deadline(DEADLINE))
    assert not flag_exists(container)


def test_durable_only_copies_the_flag_into_a_created_container_without_waiting_for_its_api(docker_client,
                                                                                          drill_images):
    """service_recovery's rollback: a container created from the previous image, not started, so its API cannot
    answer (here: a port that accepts and never answers). durable_only copies the flag in and reads it back from
    the container, and never waits on the API; the container starts halted."""
    name = PREFIX + uuid.uuid4().hex[:12]
    container = docker_client.containers.create(drill_images["base"], KEEP_RUNNING, name=name,
                                                labels={"tradeops.test": "dockermethod"})
    api = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    api.bind(("127.0.0.1", 0))
    api.listen(16)
    url = f"http://127.0.0.1:{api.getsockname()[1]}"
    try:
        target = {"name": "engine-x",
                  "verify": {"url": url + "/status", "field": "trading_active", "value": False},
                  "methods": [{"type": "http", "url": url + "/halt"},
                              {"type": "docker", "container": name, "action": "flag", "flag_path": FLAG}]}
        started = time.monotonic()
        out = HaltService([target], reason=REASON, timeout=10.0, durable_only=True).run()
        elapsed = time.monotonic() - started
        [result] = out["targets"]
        assert result["status"] == "halted" and result["verified_by"] == "flag", result
        assert [m["type"] for m in result["methods_tried"]] == ["docker"], result
        assert elapsed < 5.0, f"{elapsed:.1f} s: it waited on the API the container cannot answer"
        api.setblocking(False)
        with pytest.raises(BlockingIOError):
            api.accept()  # nothing ever connected to the engine's API
        assert status(container) == "created", "the halt must not start the container"
        container.start()
        wait_until(lambda: status(container) == "running", 30, f"{name} to run after docker start")
        assert flag_exists(container), "the flag copied into the created container is not there once it runs"
        assert_flag_records(flag_content(container), REASON)
    finally:
        api.close()
        container.remove(force=True)


# --------------------------------------------------------------------------------------------------- action stop
def test_stop_action_stops_the_container_and_resume_starts_it(engine):
    container = engine()
    m = method(container, action="stop", stop_timeout=5)
    assert m.read_flag(Deadline(DEADLINE)) is False

    m.halt(REASON, Deadline(DEADLINE))
    wait_until(lambda: status(container) == "exited", 10, f"{container.name} to be exited after halt")
    assert m.read_flag(Deadline(DEADLINE)) is True

    m.resume(Deadline(DEADLINE))
    wait_until(lambda: status(container) == "running", 30, f"{container.name} to run after resume")
    assert m.read_flag(Deadline(DEADLINE)) is False


# --------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("action", ["flag", "stop"])
def test_a_container_that_does_not_exist_is_a_backend_error_naming_it(docker_client, action):
    name = PREFIX + "absent-" + uuid.uuid4().hex[:12]
    m = DockerMethod({"type": "docker", "container": name, "action": action}, WHERE)
    for call in (lambda d: m.halt(REASON, d), m.read_flag, m.resume):
        with pytest.raises(BackendError) as info:
            call(Deadline(DEADLINE))
        assert name in str(info.value), str(info.value)


@pytest.fixture
def silent_daemon():
    """A TCP port that accepts connections (the kernel's backlog) but never answers: a hung dockerd."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.parametrize("daemon", ["no-socket", "refused", "silent"])
def test_a_daemon_that_does_not_answer_is_a_backend_error_within_the_deadline(daemon, silent_daemon, tmp_path):
    docker_host = {
        "no-socket": f"unix://{tmp_path}/nonexistent.sock",  # no dockerd at that socket
        "refused": "tcp://127.0.0.1:1",  # nothing listens: connection refused
        "silent": silent_daemon,  # connects, then no answer: only the deadline ends the wait
    }[daemon]
    seconds = 2.0
    calls = []
    for action in ("flag", "stop"):
        m = DockerMethod({"type": "docker", "container": "engine", "action": action, "docker_host": docker_host},
                         WHERE)
        calls.append((f"{action} halt", lambda d, m=m: m.halt(REASON, d)))
        if daemon != "silent":  # the silent daemon costs the whole deadline per call: its halts show it
            calls += [(f"{action} read_flag", m.read_flag), (f"{action} resume", m.resume)]
    for what, call in calls:
        started = time.monotonic()
        with pytest.raises(BackendError) as info:
            call(Deadline(seconds))
        elapsed = time.monotonic() - started
        assert elapsed < seconds + 1, f"{daemon}, {what}: took {elapsed:.2f}s, deadline {seconds}s"
        assert docker_host in str(info.value), f"{what}: {info.value}"


def test_an_invalid_action_is_a_validation_error_naming_the_option_path():
    with pytest.raises(ValidationError, match=r"^targets\[0\] \(engine\): methods\[0\]\.action must be flag or "
                                              r"stop, got 'kill'$"):
        DockerMethod({"type": "docker", "container": "engine", "action": "kill"}, WHERE)
    # as halt_trading reports it: the target is set aside with the option's full path, the others still run
    targets, invalid = build_targets([
        {"name": "good", "methods": [{"type": "docker", "container": "engine-1"}]},
        {"name": "bad", "methods": [{"type": "file", "path": "/tmp/x"},
                                    {"type": "docker", "container": "engine-2", "action": "kill"}]},
    ])
    assert [t.name for t in targets] == ["good"]
    assert [(i.name, i.error) for i in invalid] == [
        ("bad", "targets[1] (bad): methods[1].action must be flag or stop, got 'kill'")]
