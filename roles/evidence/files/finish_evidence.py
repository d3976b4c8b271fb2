"""Run on the host by capture_evidence.sh: python finish_evidence.py WORKDIR NAME < job.json

Redacts EVERY file of the evidence folder WORKDIR/NAME in place, then writes its manifest.json
(sizes and sha256 of the redacted files) and prints the capture's result line
{"workdir": ..., "manifest": {...}}. The redaction is plugins/module_utils/_redact.py, sent beside
this file (the one implementation of the collection; nothing is redacted by sed).

job.json, on stdin only (the secret values are never on disk or on a command line):
  values       the secret values this run knows (every occurrence is redacted)
  pattern      secret words for names (evidence_redact_pattern)
  min_length   shorter values are redacted only where a pattern catches them
  redact_logs  false: only the env/ files are redacted by pattern (all files still by value)
  entries      [{"name", "source"}] captured files, for the manifest
  errors       what could not be captured
  manifest     the other manifest fields
On any failure it removes the evidence folder and prints {"fatal": "..."} naming only the kind
of error (never a line of a file).
"""

import hashlib
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _redact import TextRedactor  # noqa: E402  (sent beside this file)

MARKER = "<redacted>"


def redact_file(path, redactor, patterns):
    with open(path, "rb") as fh:
        raw = fh.read()
    text = raw.decode("utf-8", "surrogateescape")
    clean = redactor.redact(text, patterns=patterns)
    if clean != text:
        tmp = path + ".redacting"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(clean.encode("utf-8", "surrogateescape"))
        os.replace(tmp, path)


def redact_tree(out, redactor, redact_logs):
    """Every regular file under out (symlinks are not followed, nor kept)."""
    for folder, _dirs, files in os.walk(out):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path):
                os.unlink(path)
                continue
            rel = os.path.relpath(path, out)
            redact_file(path, redactor, redact_logs or rel.startswith("env" + os.sep))


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(workdir, name, job):
    out = os.path.join(workdir, name)
    redactor = TextRedactor(job.get("values") or [], words=job.get("pattern") or None, marker=MARKER,
                            min_length=job.get("min_length", 4))
    redact_tree(out, redactor, bool(job.get("redact_logs", True)))

    def clean(text):
        return redactor.redact(text, patterns=True)

    files = []
    for entry in job.get("entries", []):
        path = os.path.join(out, entry["name"])
        if os.path.isfile(path):
            files.append({"name": clean(entry["name"]), "source": clean(entry["source"]),
                          "bytes": os.path.getsize(path), "sha256": sha256(path)})
    manifest = dict(job.get("manifest", {}))
    manifest["files"] = files
    manifest["errors"] = [clean(e) for e in job.get("errors", [])]
    path = os.path.join(out, "manifest.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(manifest, separators=(",", ":")) + "\n")
    return {"workdir": workdir, "manifest": manifest}


if __name__ == "__main__":
    workdir, name = sys.argv[1], sys.argv[2]
    try:
        result = main(workdir, name, json.loads(sys.stdin.read()))
    except Exception as exc:  # noqa: BLE001 - whatever failed, nothing unredacted may stay behind
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
        print(json.dumps({"fatal": f"evidence could not be redacted ({type(exc).__name__}): nothing was kept"}))
        sys.exit(1)
    print(json.dumps(result, separators=(",", ":")))
