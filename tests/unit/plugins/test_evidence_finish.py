"""roles/evidence/files/finish_evidence.py run as capture_evidence.sh runs it on a host: copied beside
_redact.py into the work folder, the job (with the secret values) on stdin."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def finish(tmp_path: Path, job: dict, name: str = "ev"):
    for src in (ROOT / "plugins/module_utils/_redact.py", ROOT / "roles/evidence/files/finish_evidence.py"):
        shutil.copy(src, tmp_path / src.name)
    proc = subprocess.run([sys.executable, "-I", "-B", str(tmp_path / "finish_evidence.py"), str(tmp_path), name],
                          input=json.dumps(job), capture_output=True, text=True, timeout=60)
    return proc


def test_every_file_redacted_before_it_is_hashed_and_logs_by_value_only_when_asked(tmp_path):
    out = tmp_path / "ev"
    (out / "env/etc").mkdir(parents=True)
    (out / "logs").mkdir()
    (out / "env/etc/app.env").write_text("DB_PASSWORD=CANARY-ENV\nKNOWN=CANARY-VALUE-1\n")
    (out / "logs/app.log").write_text("token=CANARY-LOGPATTERN ok CANARY-VALUE-1\n")
    (out / "unlisted.txt").write_text("still redacted: CANARY-VALUE-1\n")
    job = {"values": ["CANARY-VALUE-1", "ab"], "pattern": "pass|token", "min_length": 4, "redact_logs": False,
           "entries": [{"name": "env/etc/app.env", "source": "/etc/app.env (redacted)"},
                       {"name": "logs/app.log", "source": "tail /var/log/app.log"}],
           "errors": ["log /var/log/x: cannot read CANARY-VALUE-1"], "manifest": {"host": "h1"}}
    proc = finish(tmp_path, job)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "env/etc/app.env").read_text() == "DB_PASSWORD=<redacted>\nKNOWN=<redacted>\n"
    # evidence_redact_logs false: the log keeps its pattern-looking value but not the known one
    assert (out / "logs/app.log").read_text() == "token=CANARY-LOGPATTERN ok <redacted>\n"
    assert (out / "unlisted.txt").read_text() == "still redacted: <redacted>\n"
    result = json.loads(proc.stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    assert result == {"workdir": str(tmp_path), "manifest": manifest}
    assert manifest["errors"] == ["log /var/log/x: cannot read <redacted>"]
    for entry in manifest["files"]:
        data = (out / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert "CANARY-VALUE-1" not in proc.stdout + proc.stderr


def test_a_failed_redaction_keeps_nothing_and_says_only_what_kind_of_error(tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "processes.txt").write_text("app --token CANARY-RAW\n")
    proc = finish(tmp_path, {"values": ["CANARY-RAW"], "pattern": "(", "entries": [], "errors": []})
    assert proc.returncode == 1
    assert not out.exists()
    assert json.loads(proc.stdout) == {"fatal": "evidence could not be redacted (error): nothing was kept"}
    assert "CANARY" not in proc.stdout + proc.stderr
