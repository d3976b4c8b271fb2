"""The lab's monitoring: Debian's Prometheus and Alertmanager (and the PostgreSQL and Redis exporters), on the
loopback, configured from the lab's state.

- Prometheus scrapes every engine's ``/metrics`` (job ``trading_engines``), the exporters (``postgres``,
  ``redis``) and itself, every ``scrape_interval``, and evaluates the alert rules the collection ships
  (``monitoring/prometheus/trading_rules.yml``). The lab may shorten each rule's ``for:`` to at most
  ``for_max`` (a lab cannot wait 5 minutes); the copy it loads says so in each rule's ``lab_for_original``
  annotation, and ``info["rules_shortened"]`` lists what changed.
- Alertmanager sends every alert, firing and resolved, to one webhook receiver: the collection's Event-Driven
  Ansible source (``tradeops.remediation.alertmanager``), which listens where ``info["webhook"]`` says, with
  the bearer token in ``info["webhook"]["token_file"]`` (0600; Alertmanager reads it as ``credentials_file``).
  Nothing here starts ``ansible-rulebook``: the lab knows nothing of Ansible (``tradeops eda``).
- Alertmanager's cluster port is disabled (it would listen on every address).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import LabError
from .procs import free_port, http_request, pid_alive, tail, terminate
from .state import LOOPBACK, new_secret

log = logging.getLogger(__name__)

MONITORING_DIR = "monitoring"
WEBHOOK_PATH = "/alerts"
WEBHOOK_TOKEN_FILE = "webhook.token"
SCRAPE_INTERVAL = "1s"
EVALUATION_INTERVAL = "1s"
LAB_FOR_MAX = "3s"
EXPORTER_SCRAPE_INTERVAL = "5s"
EXPORTER_SCRAPE_TIMEOUT = "4s"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CALL_TIMEOUT = 5.0

_DURATION_RE = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def default_rules_files() -> list[str]:
    """The collection's alert rules, from the checkout this package runs from."""
    root = Path(__file__).resolve().parents[3]
    rules = sorted((root / "monitoring" / "prometheus").glob("*_rules.yml"))
    if not rules:
        raise LabError(f"no alert rules under {root / 'monitoring' / 'prometheus'}: pass the rules files explicitly")
    return [str(r) for r in rules]


def parse_duration(text: str | int | float) -> float:
    """Seconds in a Prometheus duration (``1h30m``, ``5m``, ``250ms``); a bare number is seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    s = str(text).strip()
    parts = _DURATION_RE.findall(s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise LabError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def find_binary(name: str, env: str) -> str:
    """``$<env>``, else ``name`` on PATH or in /usr/bin."""
    for cand in (os.environ.get(env), shutil.which(name), f"/usr/bin/{name}"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise LabError(f"{name} not found: install Debian's package ({name}) with `make setup`, or set {env}")


def shorten_rules(rules_text: str, for_max: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The rule groups of ``rules_text`` with every ``for:`` longer than ``for_max`` cut to it; and the list of
    what changed (alert, original, now). Each shortened rule keeps its original in an annotation."""
    doc = yaml.safe_load(rules_text) or {}
    limit = parse_duration(for_max)
    changed: list[dict[str, str]] = []
    for group in doc.get("groups") or []:
        for rule in group.get("rules") or []:
            original = rule.get("for")
            if original is None or parse_duration(original) <= limit:
                continue
            rule["for"] = for_max
            rule.setdefault("annotations", {})["lab_for_original"] = str(original)
            changed.append({"alert": str(rule.get("alert")), "original": str(original), "now": for_max})
    return doc, changed


def exporter_dsn(pg: Mapping[str, Any]) -> str:
    """The exporter's DSN, a URL: the exporter masks a URL's password in its logs (not a keyword DSN's)."""
    quote = urllib.parse.quote
    return (f"postgresql://{quote(pg['user'], safe='')}:{quote(pg['password'], safe='')}@{pg['host']}:{pg['port']}/"
            f"{quote(pg['dbname'], safe='')}?sslmode=disable&connect_timeout=3&application_name=tradeops-exporter")


def _spawn(argv: list[str], log_path: Path, env: Mapping[str, str] | None, what: str) -> subprocess.Popen[bytes]:
    logf = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, cwd=log_path.parent, env=dict(env) if env is not None else None,
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        raise LabError(f"cannot start {what}: {exc}") from exc
    finally:
        logf.close()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


class Monitoring:
    """Starts and stops the lab's Prometheus, Alertmanager and exporters under ``<lab_dir>/monitoring``."""

    def __init__(self, lab_dir: Path) -> None:
        self.lab_dir = Path(lab_dir)
        self.dir = self.lab_dir / MONITORING_DIR

    # -- start -------------------------------------------------------------------------------------------

    def start(self, st: Mapping[str, Any], rules_files: Sequence[str | os.PathLike[str]],
              for_max: str | None = LAB_FOR_MAX, scrape_interval: str = SCRAPE_INTERVAL,
              timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Start everything for the lab state ``st`` (its engines' ports known); returns the ``monitoring``
        state entry. Whatever started is stopped again if a part fails."""
        parse_duration(scrape_interval)
        if for_max is not None:
            parse_duration(for_max)
        deadline = time.monotonic() + timeout
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        info: dict[str, Any] = {"dir": str(self.dir), "scrape_interval": scrape_interval, "for_max": for_max,
                                "rules": [], "rules_shortened": [], "exporters": {},
                                "prometheus": None, "alertmanager": None}
        try:
            token_file = self.dir / WEBHOOK_TOKEN_FILE
            _write_private(token_file, new_secret())
            info["webhook"] = {"host": LOOPBACK, "port": free_port(), "path": WEBHOOK_PATH,
                               "token_file": str(token_file)}
            info["rules"], info["rules_shortened"] = self._write_rules(rules_files, for_max)
            self._start_exporters(st, info)
            am_port = free_port()
            (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(self.alertmanager_config(info)))
            (self.dir / "alertmanager").mkdir(exist_ok=True)
            info["alertmanager"] = self._start_server(
                "alertmanager", [find_binary("prometheus-alertmanager", "TRADEOPS_ALERTMANAGER"),
                                 f"--config.file={self.dir / 'alertmanager.yml'}",
                                 f"--storage.path={self.dir / 'alertmanager'}",
                                 f"--web.listen-address={LOOPBACK}:{am_port}",
                                 "--cluster.listen-address=", "--log.level=warn"], am_port, deadline)
            prom_port = free_port()
            (self.dir / "prometheus.yml").write_text(yaml.safe_dump(self.prometheus_config(st, info, prom_port)))
            (self.dir / "prometheus").mkdir(exist_ok=True)
            info["prometheus"] = self._start_server(
                "prometheus", [find_binary("prometheus", "TRADEOPS_PROMETHEUS"),
                               f"--config.file={self.dir / 'prometheus.yml'}",
                               f"--storage.tsdb.path={self.dir / 'prometheus'}",
                               "--storage.tsdb.retention.time=6h",
                               f"--web.listen-address={LOOPBACK}:{prom_port}", "--log.level=warn"],
                prom_port, deadline)
            return info
        except BaseException:
            self.stop(info)
            raise

    def _write_rules(self, rules_files: Sequence[str | os.PathLike[str]],
                     for_max: str | None) -> tuple[list[str], list[dict[str, str]]]:
        written: list[str] = []
        shortened: list[dict[str, str]] = []
        for i, src in enumerate(rules_files):
            try:
                text = Path(src).read_text(encoding="utf-8")
            except OSError as exc:
                raise LabError(f"cannot read the alert rules {src}: {exc}") from exc
            if for_max is None:
                doc, changed = yaml.safe_load(text) or {}, []
            else:
                doc, changed = shorten_rules(text, for_max)
            dest = self.dir / f"rules-{i}-{Path(src).name}"
            dest.write_text(yaml.safe_dump(doc, sort_keys=False))
            written.append(str(dest))
            shortened += changed
        return written, shortened

    def _start_exporters(self, st: Mapping[str, Any], info: dict[str, Any]) -> None:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "REDIS", "DATA_SOURCE"))}
        if st.get("postgres"):
            port = free_port()
            env = dict(base_env, DATA_SOURCE_NAME=exporter_dsn(st["postgres"]))  # the password stays out of argv
            info["exporters"]["postgres"] = self._launch(
                "postgres-exporter", [find_binary("prometheus-postgres-exporter", "TRADEOPS_POSTGRES_EXPORTER"),
                                      f"--web.listen-address={LOOPBACK}:{port}", "--log.level=warn"], port, env)
        if st.get("redis"):
            port = free_port()
            redis = st["redis"]
            env = dict(base_env, REDIS_PASSWORD=redis["password"])
            info["exporters"]["redis"] = self._launch(
                "redis-exporter", [find_binary("prometheus-redis-exporter", "TRADEOPS_REDIS_EXPORTER"),
                                   f"-redis.addr=redis://{redis['host']}:{redis['port']}",
                                   f"-web.listen-address={LOOPBACK}:{port}"], port, env)

    def _launch(self, name: str, argv: list[str], port: int, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        proc = _spawn(argv, self.dir / f"{name}.log", env, name)
        return {"host": LOOPBACK, "port": port, "pid": proc.pid, "log": str(self.dir / f"{name}.log"),
                "expect": Path(argv[0]).name}

    def _start_server(self, name: str, argv: list[str], port: int, deadline: float) -> dict[str, Any]:
        entry = self._launch(name, argv, port)
        entry["url"] = f"http://{LOOPBACK}:{port}"
        while True:
            if not pid_alive(entry["pid"]):
                raise LabError(f"{name} exited at start:\n{tail(Path(entry['log']), 20)}")
            try:
                if http_request(LOOPBACK, port, "GET", "/-/ready", timeout=1.0).status == 200:
                    return entry
            except OSError:
                pass
            if time.monotonic() > deadline:
                terminate(entry["pid"], entry["expect"], timeout=STOP_TIMEOUT)
                raise LabError(f"{name} was not ready within the start timeout:\n{tail(Path(entry['log']), 20)}")
            time.sleep(0.1)

    # -- configuration -------------------------------------------------------------------------------------

    @staticmethod
    def prometheus_config(st: Mapping[str, Any], info: Mapping[str, Any], port: int) -> dict[str, Any]:
        engines = [f"{spec.get('host') or LOOPBACK}:{spec['port']}" for spec in st.get("engines") or []
                   if spec.get("port")]
        scrape = [
            {"job_name": "trading_engines", "metrics_path": "/metrics",
             "static_configs": [{"targets": engines}]},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{LOOPBACK}:{port}"]}]},
        ]
        for name, exporter in sorted(info.get("exporters", {}).items()):
            # an exporter answers in a second or two (it queries the server): its own, longer interval
            scrape.append({"job_name": name, "scrape_interval": EXPORTER_SCRAPE_INTERVAL,
                           "scrape_timeout": EXPORTER_SCRAPE_TIMEOUT,
                           "static_configs": [{"targets": [f"{LOOPBACK}:{exporter['port']}"]}]})
        interval = info["scrape_interval"]
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": EVALUATION_INTERVAL,
                       "scrape_timeout": interval, "external_labels": {"tradeops_lab": "lab"}},
            "rule_files": list(info["rules"]),
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [f"{LOOPBACK}:{info['alertmanager']['port']}"]}]}]},
            "scrape_configs": scrape,
        }

    @staticmethod
    def alertmanager_config(info: Mapping[str, Any]) -> dict[str, Any]:
        hook = info["webhook"]
        return {
            "route": {
                "receiver": "tradeops-eda",
                # every alert is its own group: one webhook per alert, at once (group_wait)
                "group_by": ["..."],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "4h",
            },
            "receivers": [{
                "name": "tradeops-eda",
                "webhook_configs": [{
                    "url": f"http://{hook['host']}:{hook['port']}{hook['path']}",
                    "send_resolved": True,
                    "max_alerts": 0,
                    "http_config": {"authorization": {"type": "Bearer", "credentials_file": hook["token_file"]}},
                }],
            }],
            # as monitoring/alertmanager/alertmanager.example.yml: one P0 rather than one alert per engine
            "inhibit_rules": [
                {"source_matchers": ['alertname="TradingFleetDown"'],
                 "target_matchers": ['alertname="TradingEngineDown"'], "equal": ["job"]},
                {"source_matchers": ['alertname="PostgresDown"'],
                 "target_matchers": ['alertname=~"TradingErrorRateHigh|TradingSignalsLow"']},
            ],
        }

    # -- stop and query ------------------------------------------------------------------------------------

    def stop(self, info: Mapping[str, Any] | None) -> None:
        """Stop whatever ``info`` knows (Prometheus first, so it sends nothing more). Idempotent."""
        if not info:
            return
        parts = [info.get("prometheus"), info.get("alertmanager"), *(info.get("exporters") or {}).values()]
        for part in parts:
            if part and part.get("pid"):
                if not terminate(part["pid"], part.get("expect"), timeout=STOP_TIMEOUT):
                    log.warning("%s (pid %s) did not stop", part.get("expect"), part["pid"])
        (self.dir / WEBHOOK_TOKEN_FILE).unlink(missing_ok=True)


def api_get(server: Mapping[str, Any], path: str, timeout: float = CALL_TIMEOUT) -> Any:
    """GET a Prometheus or Alertmanager API path; returns the decoded JSON (``data`` for Prometheus' envelope)."""
    res = http_request(server["host"], server["port"], "GET", path, timeout=timeout)
    if res.status != 200:
        raise LabError(f"GET {path} on {server['host']}:{server['port']} answered {res.status}: {res.text[:300]}")
    body = res.json()
    if isinstance(body, dict) and "status" in body and "data" in body:
        return body["data"]
    return body


def firing_alerts(prometheus: Mapping[str, Any], timeout: float = CALL_TIMEOUT) -> list[dict[str, Any]]:
    """Prometheus' active alerts (pending and firing), as ``/api/v1/alerts`` gives them."""
    return list((api_get(prometheus, "/api/v1/alerts", timeout) or {}).get("alerts") or [])
