"""Real `ansible-playbook playbooks/capture_evidence.yml` runs against two local hosts.

No lab: the hosts are this machine (ansible_connection: local). The test writes logs with ERROR
lines and an env file full of canary secrets, listens on a TCP port, and runs a process with a
secret on its command line; then it checks what an investigator gets on the controller (one
checksummed 0600 archive per host, with the log tails, the recent errors, the process list, the
sockets, the redacted env file and a manifest) and that no canary is anywhere: not in the archive,
not in the playbook output, not in the evidence folder, not left on the host.

Issue 13 item 4: a canary in every form the redaction must catch, planted where the role captures
(the process list, an env file, a YAML config, a log), and secret values that only the inventory
(or a no_log variable) knows, shown in the logs and on a command line in plain words.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, VENV_BIN, ansible_env

pytestmark = pytest.mark.integration

HOSTS = ("ev-host-a", "ev-host-b")
INCIDENT = "INC-4242"
ENV_FILE = """\
# trading engine settings
DB_PASSWORD=hunter2-canary
export API_TOKEN="tok-canary"
DATABASE_URL=postgres://u:pw-canary@h/db
PRIVATE_KEY="-----BEGIN PRIVATE KEY-----
pem-canary
-----END PRIVATE KEY-----"
ADMIN_PW=adminpw-canary
MYSQL_PWD=mysqlpwd-canary
HMAC_SALT=salt-canary
declare -x VAULT_TOKEN="declare-canary"
SIGNING_SECRET=cont1-canary\\
cont2-canary
HALT_TOKEN_HEADER=X-Admin-Token
LOG_LEVEL=info
"""
# A YAML config captured beside the env file.
CONFIG_FILE = """\
db:
  host: db1
  password: yaml-canary with spaces
  pool: 5
admin:
  api_key: >-
    yamlblock-canary
log_level: info
"""
# A log of HTTP requests: header values, JSON, quoted values, and secrets known only by value.
HTTP_LOG = """\
2024-05-01T10:02:00 DEBUG request headers Authorization: Bearer bearer-canary id=7
2024-05-01T10:02:01 DEBUG {"path": "/halt", "headers": {"X-Admin-Token": "json-canary", "X-Lab-Source": "management"}}
2024-05-01T10:02:02 ERROR login rejected token="logquote-canary" user=bob
2024-05-01T10:02:03 INFO engine feed opened with KS-TOKEN-known-canary at seq 9
2024-05-01T10:02:04 INFO connected as app/DBPW-known-canary ok
2024-05-01T10:02:05 INFO vault says TEMPLATED-known-canary ok
2024-05-01T10:02:06 INFO operator passed NOLOG-known-canary along
2024-05-01T10:02:07 INFO disk table ok
"""
# On the command line of a running process.
PROC_ARGS = ["--api-token=proc-canary", 'token="psquote-canary"', "password='pssingle-canary'",
             '--db-password="psdb-canary"', "--admin-token", "psflag-canary", "KS-TOKEN-known-canary",
             "--region", "eu-west"]
CANARIES = ("hunter2-canary", "tok-canary", "pw-canary", "pem-canary", "log-canary", "proc-canary",
            "adminpw-canary", "mysqlpwd-canary", "salt-canary", "declare-canary", "cont1-canary", "cont2-canary",
            "yaml-canary", "yamlblock-canary", "bearer-canary", "json-canary", "logquote-canary",
            "psquote-canary", "pssingle-canary", "psdb-canary", "psflag-canary",
            "KS-TOKEN-known-canary", "DBPW-known-canary", "TEMPLATED-known-canary", "NOLOG-known-canary")
TAIL = 50


def recap(stdout: str) -> dict[str, dict[str, int]]:
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line.strip())
        if m:
            out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


def write_inventory(path: Path, hosts=HOSTS, secret_host: bool = False) -> Path:
    """With secret_host, a host outside the play holds secrets only the inventory knows (a kill-switch
    token, a DB password at depth, a templated token, a 2-character password the guard leaves alone)."""
    inventory = {"evidence_targets": {"hosts": {
        h: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable} for h in hosts}}}
    if secret_host:
        inventory["engines"] = {"hosts": {"ev-engine-1": {
            "halt_trading_target": {"name": "ev-engine-1", "methods": [
                {"type": "http", "url": "http://127.0.0.1:1", "token": "KS-TOKEN-known-canary",
                 "token_header": "X-Admin-Token"}]},
            "engine_db": {"login_user": "app", "login_password": "DBPW-known-canary"},
            "engine_vault_token": "{{ 'TEMPLATED-known' ~ '-canary' }}",
            "engine_short_pw": "ab",
        }}}
    path.write_text(yaml.safe_dump(inventory))
    return path


def run_capture(inventory: Path, extra_vars: dict, *args: str, env: dict | None = None, timeout: float = 240):
    """Run the playbook with -v: every task result that is not no_log is printed, so a secret in
    any of them would show up in the output the leak test searches."""
    vars_file = inventory.with_suffix(".vars.json")
    vars_file.write_text(json.dumps(extra_vars))
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / "capture_evidence.yml"),
           "-e", f"@{vars_file}", "-v", *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env or ansible_env(), capture_output=True, text=True, timeout=timeout)
    proc.elapsed = time.monotonic() - started
    return proc


def members(archive: Path) -> dict[str, bytes]:
    """Every regular file of the archive, by its name inside the archive's top folder."""
    out = {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile():
                top, _, rest = m.name.partition("/")
                assert top == archive.name[: -len(".tar.gz")], f"{m.name} is outside the archive's top folder"
                out[rest] = tar.extractfile(m).read()
    return out


def all_files_text(folder: Path) -> str:
    """Every file under folder, archives decompressed member by member, as one string."""
    chunks = []
    for p in folder.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            chunks.append(data.decode(errors="replace"))
            if p.name.endswith(".tar.gz"):
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                    for m in tar.getmembers():
                        if m.isfile():
                            chunks.append(tar.extractfile(m).read().decode(errors="replace"))
    return "\n".join(chunks)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """One real run for two hosts, with logs, a secret env file, a listening port and a process."""
    base = tmp_path_factory.mktemp("evidence")
    logs = base / "logs"
    logs.mkdir()
    app_lines = [f"2024-05-01T10:00:{i % 60:02d} INFO tick {i}" for i in range(120)]
    app_lines[100] = "2024-05-01T10:01:40 ERROR order gateway timeout id=100"
    app_lines[110] = "2024-05-01T10:01:50 Traceback (most recent call last): boom id=110"
    app_lines[115] = "2024-05-01T10:01:55 error connecting postgres://app:log-canary@db:5432/orders id=115"
    app_lines[5] = "2024-05-01T10:00:05 ERROR early failure id=5"
    (logs / "app.log").write_text("\n".join(app_lines) + "\n")
    (logs / "engine.log").write_text("started\nFATAL engine lost its feed\nrunning\n")
    (logs / "http.log").write_text(HTTP_LOG)
    env_file = base / "trading.env"
    env_file.write_text(ENV_FILE)
    config_file = base / "app-config.yml"
    config_file.write_text(CONFIG_FILE)
    dest = base / "dest"
    remote_tmp = base / "remote-tmp"
    remote_tmp.mkdir()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    secret_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", *PROC_ARGS],
                                   start_new_session=True)
    try:
        proc = run_capture(write_inventory(base / "inventory.yml", secret_host=True), {
            "evidence_dest": str(dest),
            "evidence_incident_id": INCIDENT,
            "evidence_remote_tmp": str(remote_tmp),
            "evidence_tail_lines": TAIL,
            "evidence_log_paths": [str(logs / "*.log"), str(base / "missing" / "*.log")],
            "evidence_env_files": [str(env_file), str(config_file)],
            "evidence_checksum_paths": [str(env_file)],
            # a value a playbook passes with no_log
            "evidence_secret_values": ["NOLOG-known-canary"],
        })
    finally:
        secret_proc.kill()
        secret_proc.wait()
        listener.close()
    print(f"capture_evidence.yml for {len(HOSTS)} hosts: {proc.elapsed:.2f} s")
    return {"proc": proc, "dest": dest, "logs": logs, "env_file": env_file, "config_file": config_file,
            "port": port, "base": base,
            "remote_tmp": remote_tmp, "secret_pid": secret_proc.pid, "app_lines": app_lines}


def archives(dest: Path, incident: str = INCIDENT) -> dict[str, Path]:
    """{host: archive}, checking the name: <incident>-<YYYYmmddTHHMMSSZ>-<host>.tar.gz."""
    found = {}
    for p in dest.glob("*.tar.gz"):
        m = re.fullmatch(rf"{re.escape(incident)}-(\d{{8}}T\d{{6}}Z)-(.+)\.tar\.gz", p.name)
        assert m, f"unexpected archive name {p.name}"
        found[m.group(2)] = p
    return found


def test_one_archive_per_host_mode_0600_and_run_is_a_change(capture):
    proc = capture["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    found = archives(capture["dest"])
    assert sorted(found) == sorted(HOSTS)
    stamps = {re.search(r"-(\d{8}T\d{6}Z)-", p.name).group(1) for p in found.values()}
    assert len(stamps) == 1, f"one UTC stamp per run, got {stamps}"
    for path in found.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
        sha = path.with_name(path.name + ".sha256")
        assert stat.S_IMODE(sha.stat().st_mode) == 0o600
    assert stat.S_IMODE(capture["dest"].stat().st_mode) == 0o700
    # nothing else in the evidence folder
    assert sorted(p.name for p in capture["dest"].iterdir()) == sorted(
        [p.name for p in found.values()] + [p.name + ".sha256" for p in found.values()])
    # capture writes new evidence every run: honest changes on every host
    counts = recap(proc.stdout)
    assert set(HOSTS) <= set(counts)
    assert all(counts[h]["changed"] >= 3 and counts[h]["failed"] == 0 for h in HOSTS), counts


def test_sha256_files_verify_with_sha256sum_and_python(capture):
    dest = capture["dest"]
    found = archives(dest)
    check = subprocess.run(["sha256sum", "-c", *[p.name + ".sha256" for p in found.values()]],
                           cwd=dest, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(HOSTS)
    for host, path in found.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.with_name(path.name + ".sha256").read_text() == f"{digest}  {path.name}\n"
        # the evidence_archives fact (printed by the role) carries the same host, path and digest
        assert re.search(rf"host: {host}\s+path: {re.escape(str(path))}\s+sha256: {digest}", capture["proc"].stdout), \
            capture["proc"].stdout[-3000:]


def test_archive_holds_log_tails_and_recent_errors(capture):
    app_lines = capture["app_lines"]
    for path in archives(capture["dest"]).values():
        files = members(path)
        tail = files[f"logs{capture['logs']}/app.log"].decode().splitlines()
        assert len(tail) == TAIL
        assert tail[0] == app_lines[-TAIL] and tail[-4:] == app_lines[-4:]
        assert tail[115 - len(app_lines)] == app_lines[115].replace("log-canary", "<redacted>")
        assert "FATAL engine lost its feed" in files[f"logs{capture['logs']}/engine.log"].decode()
        errors = files["recent_errors.txt"].decode()
        assert "ERROR order gateway timeout id=100" in errors
        assert "Traceback (most recent call last): boom id=110" in errors
        assert "ERROR early failure id=5" in errors  # searched beyond the tail
        assert "FATAL engine lost its feed" in errors
        assert "INFO tick" not in errors and "running" not in errors
        # the URL credential in the log line is redacted, the rest of the line kept
        assert "error connecting postgres://app:<redacted>@db:5432/orders id=115" in errors


def test_archive_holds_process_list_sockets_and_manifest(capture):
    for host, path in archives(capture["dest"]).items():
        files = members(path)
        ps = files["processes.txt"].decode()
        pids = {line.split()[0] for line in ps.splitlines()[1:] if line.strip()}
        assert str(os.getpid()) in pids, "the pytest process is missing from the process list"
        assert "1" in pids, "init is missing: the list is not every process of the host"
        assert str(capture["secret_pid"]) in pids
        assert "--api-token=<redacted>" in ps
        # the whole value of every form, and the arguments around them kept
        [line] = [ln for ln in ps.splitlines() if ln.split()[0] == str(capture["secret_pid"])]
        assert line.endswith("import time; time.sleep(300) --api-token=<redacted> token=<redacted> "
                             "password=<redacted> --db-password=<redacted> --admin-token <redacted> <redacted> "
                             "--region eu-west"), line
        sockets = files["sockets.txt"].decode()
        assert f"127.0.0.1:{capture['port']}" in sockets, sockets
        manifest = json.loads(files["manifest.json"])
        assert manifest["host"] == host and manifest["incident_id"] == INCIDENT
        assert re.fullmatch(r"\d{8}T\d{6}Z", manifest["run_timestamp"]) and path.name.count(manifest["run_timestamp"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["captured_at"])
        listed = {f["name"]: f for f in manifest["files"]}
        assert {"processes.txt", "sockets.txt", "recent_errors.txt", "system.txt", "checksums.sha256",
                f"logs{capture['logs']}/app.log", f"env{capture['env_file']}"} <= set(listed)
        for name, entry in listed.items():
            assert entry["sha256"] == hashlib.sha256(files[name]).hexdigest(), name
        assert listed["sockets.txt"]["source"].startswith("ss ")
        # the glob that matches nothing is reported, and did not stop the capture
        assert manifest["errors"] == [f"no file matches {capture['base']}/missing/*.log"]
        env_sum = hashlib.sha256(capture["env_file"].read_bytes()).hexdigest()
        assert files["checksums.sha256"].decode() == f"{env_sum}  {capture['env_file']}\n"


def test_env_file_is_redacted(capture):
    for path in archives(capture["dest"]).values():
        env = members(path)[f"env{capture['env_file']}"].decode()
        assert env.splitlines() == [
            "# trading engine settings",
            "DB_PASSWORD=<redacted>",
            "export API_TOKEN=<redacted>",
            "DATABASE_URL=postgres://u:<redacted>@h/db",
            "PRIVATE_KEY=<redacted>",
            "ADMIN_PW=<redacted>",
            "MYSQL_PWD=<redacted>",
            "HMAC_SALT=<redacted>",
            "declare -x VAULT_TOKEN=<redacted>",
            "SIGNING_SECRET=<redacted>",
            "HALT_TOKEN_HEADER=X-Admin-Token",
            "LOG_LEVEL=info",
        ]


def test_yaml_config_is_redacted_value_and_block(capture):
    for path in archives(capture["dest"]).values():
        config = members(path)[f"env{capture['config_file']}"].decode()
        assert config.splitlines() == [
            "db:", "  host: db1", "  password: <redacted>", "  pool: 5",
            "admin:", "  api_key: <redacted>",
            "log_level: info",
        ]


def test_log_is_redacted_by_pattern_and_by_the_values_the_run_knows(capture):
    for path in archives(capture["dest"]).values():
        files = members(path)
        log = files[f"logs{capture['logs']}/http.log"].decode()
        assert log.splitlines() == [
            "2024-05-01T10:02:00 DEBUG request headers Authorization: <redacted> id=7",
            '2024-05-01T10:02:01 DEBUG {"path": "/halt", "headers": {"X-Admin-Token": <redacted>, '
            '"X-Lab-Source": "management"}}',
            "2024-05-01T10:02:02 ERROR login rejected token=<redacted> user=bob",
            # known only to the inventory (another host's kill-switch token, a DB password at depth,
            # a templated variable) or passed as a no_log value: redacted wherever they show
            "2024-05-01T10:02:03 INFO engine feed opened with <redacted> at seq 9",
            "2024-05-01T10:02:04 INFO connected as app/<redacted> ok",
            "2024-05-01T10:02:05 INFO vault says <redacted> ok",
            "2024-05-01T10:02:06 INFO operator passed <redacted> along",
            # the min-length guard: the 2-character password "ab" does not mangle "table"
            "2024-05-01T10:02:07 INFO disk table ok",
        ]
        assert "ERROR login rejected token=<redacted> user=bob" in files["recent_errors.txt"].decode()


def test_no_canary_anywhere_and_nothing_left_on_the_host(capture):
    # the canaries are really there to be leaked: the search below is not vacuous
    planted = (capture["env_file"].read_text() + capture["config_file"].read_text() + HTTP_LOG
               + "\n".join(capture["app_lines"]) + " ".join(PROC_ARGS))
    assert all(c in planted for c in CANARIES)
    # every member of the unpacked archives, every file of the evidence folder, the playbook output
    archived = "\n".join(b.decode(errors="replace") for p in archives(capture["dest"]).values()
                         for b in members(p).values())
    assert "LOG_LEVEL=info" in archived
    controller = all_files_text(capture["dest"])
    output = capture["proc"].stdout + capture["proc"].stderr
    assert "Evidence | Capture logs" in output
    assert "with spaces" not in archived  # the rest of a YAML value with spaces
    for canary in CANARIES:
        assert canary not in archived, f"{canary} is in an archive member"
        assert canary not in controller, f"{canary} is in the evidence folder"
        assert canary not in output, f"{canary} is in the playbook output"
    assert list(capture["remote_tmp"].iterdir()) == [], "temporary evidence files were left on the host"


def test_check_mode_captures_and_writes_nothing(tmp_path):
    dest = tmp_path / "dest"
    remote_tmp = tmp_path / "remote-tmp"
    remote_tmp.mkdir()
    proc = run_capture(write_inventory(tmp_path / "inventory.yml"), {
        "evidence_dest": str(dest), "evidence_remote_tmp": str(remote_tmp),
        "evidence_log_paths": ["/etc/hostname"]}, "--check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "evidence is NOT captured in check mode" in proc.stdout
    assert not dest.exists()
    assert list(remote_tmp.iterdir()) == []
    counts = recap(proc.stdout)
    assert set(HOSTS) <= set(counts) and all(c["changed"] == 0 for c in counts.values()), counts


def _path_without(tmp_path: Path, missing: tuple[str, ...]) -> str:
    """A PATH holding everything of the current PATH except the tools in missing."""
    shim = tmp_path / "bin"
    shim.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            target = shim / entry.name
            if entry.name not in missing and not target.exists() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    assert all(shutil.which(tool, path=str(shim)) is None for tool in missing)
    return str(shim)


@pytest.mark.parametrize("missing, expected", [
    (("ss",), "netstat -ltnup"),
    (("ss", "netstat"), None),
])
def test_missing_socket_tools_never_fail_the_capture(tmp_path, missing, expected):
    if expected and not shutil.which("netstat"):
        pytest.skip("netstat is not installed here")
    dest = tmp_path / "dest"
    remote_tmp = tmp_path / "remote-tmp"
    remote_tmp.mkdir()
    env = ansible_env(PATH=_path_without(tmp_path, missing))
    proc = run_capture(write_inventory(tmp_path / "inventory.yml", hosts=HOSTS[:1]), {
        "evidence_dest": str(dest), "evidence_remote_tmp": str(remote_tmp), "evidence_log_paths": []}, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    [path] = archives(dest, incident="incident").values()  # the default incident id
    files = members(path)
    manifest = json.loads(files["manifest.json"])
    sources = {f["name"]: f["source"] for f in manifest["files"]}
    assert "processes.txt" in sources
    if expected:
        assert sources["sockets.txt"] == expected and "LISTEN" in files["sockets.txt"].decode()
        assert manifest["errors"] == []
    else:
        assert "sockets.txt" not in files
        assert manifest["errors"] == [
            "listening sockets not captured: ss is not installed; netstat is not installed"]
        assert "ss is not installed; netstat is not installed" in proc.stdout
    assert list(remote_tmp.iterdir()) == []
