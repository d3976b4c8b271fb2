"""Run on the controller by the evidence role: python - DEST FETCHED_JSON

FETCHED_JSON is [{"host", "name", "errors", ...}] for the archives fetched into DEST. For each one:
make DEST/name mode 0600 and write DEST/name.sha256 in sha256sum format ("<hex>  <name>", so
`sha256sum -c name.sha256` verifies it from DEST), mode 0600, atomically.
Prints the evidence_archives list as JSON: [{"host", "path", "sha256", "errors"}].
"""

import hashlib
import json
import os
import sys


def main(dest, fetched):
    archives = []
    for item in fetched:
        name = item["name"]
        path = os.path.join(dest, name)
        os.chmod(path, 0o600)
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        tmp = path + ".sha256.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{digest.hexdigest()}  {name}\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path + ".sha256")
        archives.append({"host": item["host"], "path": path, "sha256": digest.hexdigest(),
                         "errors": item.get("errors", [])})
    print(json.dumps(archives))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
