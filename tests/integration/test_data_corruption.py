"""playbooks/data_corruption.yml with real ansible-playbook against a lab whose database has
been corrupted with every built-in kind of bad row (exact counts recorded by the lab)."""

from __future__ import annotations

import json
import stat
import time
from datetime import datetime

import pytest

from tests.helpers.records import read_record
from tests.integration.test_p0_outage import recap

pytestmark = pytest.mark.integration

# Independent of the module: the seed 002 checks written out by hand.
CHECKS = {
    "null_prices": "SELECT count(*) FROM positions WHERE entry_price IS NULL OR current_price IS NULL",
    "invalid_status": "SELECT count(*) FROM trades WHERE status IS NULL OR status NOT IN ('open','closed','cancelled')",
    "orphan_trades": "SELECT count(*) FROM trades t "
                     "WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.account_id)",
    "duplicate_ids": "SELECT (SELECT count(*) - count(DISTINCT id) FROM trades) "
                     "+ (SELECT count(*) - count(DISTINCT id) FROM positions)",
    "non_positive_quantity": "SELECT (SELECT count(*) FROM trades WHERE quantity <= 0) + "
                             "(SELECT count(*) FROM positions WHERE quantity <= 0 AND status <> 'closed')",
    "future_timestamps": "SELECT (SELECT count(*) FROM trades WHERE created_at > now() + interval '1 minute') + "
                         "(SELECT count(*) FROM positions WHERE updated_at > now() + interval '1 minute')",
    "position_mismatch": """
        WITH p AS (SELECT account_id, symbol, sum(quantity) q FROM positions GROUP BY 1, 2),
             t AS (SELECT account_id, symbol, sum(CASE WHEN side = 'sell' THEN -quantity ELSE quantity END) q
                   FROM trades WHERE status = 'closed' GROUP BY 1, 2)
        SELECT count(*) FROM p FULL JOIN t USING (account_id, symbol) WHERE coalesce(p.q, 0) <> coalesce(t.q, 0)""",
}


def counts(lab):
    return {name: lab.query(sql)[0][0] for name, sql in CHECKS.items()}


def read_only(lab):
    return lab.query("SHOW default_transaction_read_only")[0][0]


def trading(lab):
    return sorted(e["name"] for e in lab.lab.engines() if e["trading_active"])


def run(lab, tmp_path, *extra):
    return lab.run_playbook("data_corruption.yml", "-e", f"incident_report_dir={tmp_path}",
                            "-e", f"db_integrity_backup_dir={tmp_path}/backups", "-e", "health_gate_stable_for=1",
                            "-e", "halt_trading_quiesce_seconds=1", *extra)


def test_data_corruption_ends_clean_writable_and_halted_until_approval(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    assert all(v == 0 for v in counts(lab).values()), counts(lab)
    injected = lab.lab.inject("corrupt-rows")
    before_total = lab.query("SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM positions)")[0][0]
    found = counts(lab)
    for kind, record in injected["kinds"].items():
        assert found[kind] >= record["count"] > 0, (kind, found[kind], record)

    proc = run(lab, tmp_path)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "Backup verified" in proc.stdout
    # a clean scan, a writable database, trading halted until approval
    assert all(v == 0 for v in counts(lab).values()), counts(lab)
    assert read_only(lab) == "off"
    assert trading(lab) == []
    assert "Resume SKIPPED: no approval" in proc.stdout
    # nothing was deleted: every row that left the tables is in the quarantine schema
    quarantined = lab.query("SELECT (SELECT count(*) FROM tradeops_quarantine.trades) "
                            "+ (SELECT count(*) FROM tradeops_quarantine.positions)")[0][0]
    created = lab.query("SELECT count(*) FROM tradeops_quarantine.positions__reconciled "
                        "WHERE old_quantity IS NULL")[0][0]
    after_total = lab.query("SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM positions)")[0][0]
    assert after_total + quarantined - created == before_total
    # the verified backup is kept, private; the scratch database is gone
    backups = list((tmp_path / "backups").glob("*.pgc"))
    assert len(backups) == 1 and stat.S_IMODE(backups[0].stat().st_mode) == 0o600
    assert lab.query("SELECT count(*) FROM pg_database WHERE datname LIKE '%%_verify_%%'")[0][0] == 0
    report = read_record(tmp_path, "data-corruption")
    assert report["resume"]["outcome"] == "skipped_not_approved"
    assert report["verdict"]["text"].startswith("RECOVERED: health gate GO"), report["verdict"]


def test_an_index_corrupted_on_disk_is_rebuilt_and_a_clean_rerun_with_skip_if_clean_changes_nothing(
        lab_factory, tmp_path):
    lab = lab_factory(engines=2)
    lab.lab.inject("corrupt-rows")
    fault = lab.lab.inject("index-corruption")
    assert fault["amcheck"]["status"] == "corrupt"
    proc = run(lab, tmp_path, "-e", "db_integrity_skip_if_clean=true")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert all(v == 0 for v in counts(lab).values()), counts(lab)
    # REINDEX gave the index a new file, and amcheck passes on it
    assert lab.query("SELECT pg_relation_filepath('trades_id_idx')")[0][0] != fault["relation_file"]
    assert lab.query("SELECT true FROM (SELECT bt_index_check('trades_id_idx'::regclass)) c")[0][0] is True
    assert read_only(lab) == "off" and trading(lab) == []
    # the same playbook again: nothing to repair, so no read-only switch, no backup, no change
    again = run(lab, tmp_path, "-e", "db_integrity_skip_if_clean=true")
    assert again.returncode == 0, again.stdout[-5000:]
    assert len(list((tmp_path / "backups").glob("*.pgc"))) == 1
    assert all(c["changed"] == 0 for c in recap(again.stdout).values()), again.stdout[-3000:]


def test_a_failed_repair_leaves_the_database_read_only_and_trading_halted(lab_factory, tmp_path):
    lab = lab_factory(engines=2)
    lab.lab.inject("corrupt-rows")
    # a custom check that can never come clean (custom rows cannot be quarantined)
    extra = json.dumps({"db_integrity_custom_checks": [{"name": "always_bad", "sql": "SELECT 1 AS id"}],
                        "db_integrity_rescan_retries": 1, "db_integrity_rescan_delay": 1})
    proc = run(lab, tmp_path, "-e", extra)
    assert proc.returncode != 0
    assert "left READ-ONLY and trading HALTED" in proc.stdout
    assert read_only(lab) == "on"
    # trading stays halted after the failed run: watched for a second, no engine trades and none writes an
    # order after the contain phase's halt
    halts = read_record(tmp_path, "data-corruption")["halts"]
    contained_at = datetime.fromisoformat([h for h in halts if h["phase"] == "contain"][0]["at"].replace(
        "Z", "+00:00")).timestamp()
    deadline = time.monotonic() + 1.0
    while True:
        assert trading(lab) == []
        assert all(lab.orders_after(name, contained_at) == 0 for name in lab.engines())
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    # the report was written before the run stopped, and names the failed phase
    written = sorted(p.name for p in tmp_path.glob("data-corruption*"))
    assert written == ["data-corruption.json", "data-corruption.md"], written
    report = read_record(tmp_path, "data-corruption")
    assert report["verdict"]["text"].startswith("HALTED, NOT RECOVERED in repair"), report["verdict"]
    assert report["failure"]["phase"] == "repair"
    assert "READ-ONLY" in report["failure"]["reason"], report["failure"]


def test_pg_integrity_catches_the_lab_index_corruption_and_the_lock_and_long_query(lab_factory):
    """The lab corrupts bytes of trades_id_idx on disk (its own cluster only); amcheck must say so."""
    from ansible_collections.tradeops.remediation.plugins.module_utils._pg_integrity import IntegrityService

    lab = lab_factory(engines=1)
    pg = lab.state["postgres"]
    params = {"login_host": pg["host"], "login_port": pg["port"], "login_user": pg["user"],
              "login_password": pg["password"], "login_db": pg["dbname"], "sslmode": "disable",
              "connect_timeout": 5, "allow_create_extension": True, "long_query_seconds": 1, "lock_timeout": 1}
    clean = IntegrityService(dict(params)).run()
    assert clean["status"] == "ok", clean["corrupt"]
    lab.lab.inject("index-corruption")
    out = IntegrityService(dict(params, checks=["amcheck"])).run()
    amcheck = [c for c in out["checks"] if c["name"] == "amcheck"][0]
    assert out["status"] == "corrupt" and amcheck["status"] == "corrupt"
    assert "trades_id_idx" in json.dumps(amcheck["sample"])
    lab.lab.inject("index-corruption", clear=True)
    injected = time.monotonic()
    lab.lab.inject("long-query")
    lab.lab.inject("blocking-lock")
    # the long query counts once it has run for long_query_seconds (1 s): scan until both show, within 15 s
    deadline = injected + 15
    while True:
        out = IntegrityService(dict(params, checks=["long_queries", "blocking_locks"])).run()
        status = {c["name"]: c for c in out["checks"]}
        if all(status[n]["status"] == "warn" for n in ("long_queries", "blocking_locks")) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status["long_queries"]["status"] == "warn" and status["long_queries"]["count"] >= 1, status
    assert status["blocking_locks"]["status"] == "warn" and status["blocking_locks"]["count"] >= 1, status
    assert time.monotonic() - injected >= 1, "a query younger than long_query_seconds was reported long"


def test_restore_path_swaps_in_a_verified_backup_and_keeps_the_corrupt_database(lab_factory, tmp_path):
    lab = lab_factory(engines=2)
    first = run(lab, tmp_path)  # a clean run leaves a verified backup behind
    assert first.returncode == 0, first.stdout[-3000:]
    backup = next((tmp_path / "backups").glob("*.pgc"))
    lab.lab.inject("corrupt-rows")
    assert counts(lab)["invalid_status"] > 0
    proc = run(lab, tmp_path, "-e", f"db_integrity_restore_from={backup}")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert all(v == 0 for v in counts(lab).values()), counts(lab)
    assert read_only(lab) == "off" and trading(lab) == []
    kept = [r[0] for r in lab.query("SELECT datname FROM pg_database WHERE datname LIKE 'trading_corrupt_%%'")]
    assert len(kept) == 1, "the corrupt database must be kept, renamed, never dropped"
