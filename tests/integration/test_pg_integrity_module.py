"""Drive pg_integrity's main() with patched module args against a real PostgreSQL (one lab for the
module, one fresh database per test; see tests/integration/test_pg_integrity_service.py for the
data set). What matters here is the module boundary: the result shape, check mode, when the task
fails and with what message, and that the password never leaves the module."""

from __future__ import annotations

import psycopg2
import pytest
from ansible_collections.tradeops.remediation.plugins.modules import pg_integrity

from tests.helpers.modules import run_module as run_helper
from tests.integration.test_pg_integrity_service import PgCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from tests.conftest import start_lab

    handle = start_lab(tmp_path_factory.mktemp("pgi-module-lab"), engines=1)
    try:
        pg = PgCluster(handle.lab.state["postgres"])
        pg.create_template()
        yield pg
    finally:
        handle.lab.down()


@pytest.fixture
def db(cluster):
    database = cluster.create_db()
    yield database
    cluster.drop_db(database.name)


def run_module(capsys, args):
    return run_helper(pg_integrity, capsys, args)


def test_result_shape_on_a_clean_database(capsys, db):
    out = run_module(capsys, db.params())
    assert out["_rc"] == 0, out["msg"]
    assert out["changed"] is False and out["status"] == "ok" and out["database"] == db.name
    assert {"status", "msg", "database", "checks", "passes", "corrupt", "warned", "skipped_checks", "errors",
            "actions", "incident_id", "elapsed_ms"} <= set(out)
    assert "skipped" not in out  # Ansible's task status: a non-empty list there marks the task skipped
    assert set(out["checks"][0]) == {"name", "table", "pass", "status", "count", "sample", "message"}
    assert set(out["passes"][0]) == {"name", "table", "checks", "duration_ms", "status"}
    assert len(out["checks"]) == 15 and out["skipped_checks"] == ["checksum_failures", "amcheck"]
    assert out["msg"].startswith("ok: 13 check(s) ran")
    assert "diff" not in out


def test_check_mode_performs_no_action(capsys, db, tmp_path):
    db.execute("UPDATE positions SET entry_price = NULL WHERE id = 1; UPDATE positions SET quantity = 3 WHERE id = 2")
    export = tmp_path / "rows.json"
    out = run_module(capsys, db.params(
        read_only=True, read_only_sessions="terminate", allow_create_extension=True,
        actions=["export", "quarantine", "reconcile"], export_path=str(export),
        _ansible_check_mode=True, _ansible_diff=True))
    assert out["_rc"] == 0, out["msg"]
    assert out["changed"] is True  # the prediction
    assert [a["action"] for a in out["actions"]] == ["read_only", "create_extension", "export", "quarantine",
                                                     "reconcile"]
    assert all("check mode" in a["message"] for a in out["actions"]), out["actions"]
    assert out["diff"] == {"before": {"default_transaction_read_only": "off"},
                           "after": {"default_transaction_read_only": "on"}}
    assert out["status"] == "corrupt" and sorted(out["corrupt"]) == ["null_prices", "position_mismatch"]
    # nothing happened: still writable, no setting, no schema, no extension, no file, the rows in place
    db.execute("INSERT INTO accounts VALUES (60, 'still-writable')")
    assert db.scalar("SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                     "WHERE d.datname = current_database()") == 0
    assert db.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'tradeops_quarantine'") == 0
    assert db.scalar("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'") == 0
    assert not export.exists()
    assert db.query("SELECT entry_price, quantity FROM positions WHERE id IN (1, 2) ORDER BY id") == [
        (None, 8), (101, 3)]


def test_corruption_is_reported_and_fails_the_task_only_when_asked(capsys, db):
    db.execute("UPDATE positions SET entry_price = NULL WHERE id IN (3, 4)")
    out = run_module(capsys, db.params(checks=["null_prices", "invalid_status"]))
    assert out["_rc"] == 0 and "failed" not in out and out["status"] == "corrupt" and out["corrupt"] == ["null_prices"]
    out = run_module(capsys, db.params(checks=["null_prices", "invalid_status"], fail_on_corruption=True))
    assert out["_rc"] == 1 and out["failed"] is True
    assert out["msg"].startswith(
        "pg_integrity: corruption found by 1 check(s): null_prices (positions): 2 row(s) of positions: entry_price")
    assert "actions: [quarantine, export]" in out["msg"]  # what to do next
    assert out["checks"][0]["sample"] == [3, 4]  # the results come back with the failure


def test_fail_on_corruption_keeps_the_database_read_only(capsys, db):
    db.execute("UPDATE trades SET status = 'lost' WHERE id = 5")
    out = run_module(capsys, db.params(read_only=True, checks=["invalid_status"]))
    assert out["_rc"] == 0 and out["changed"] is True
    out = run_module(capsys, db.params(read_only=False, checks=["invalid_status"], fail_on_corruption=True))
    assert out["_rc"] == 1 and out["actions"][-1]["status"] == "skipped"
    assert db.scalar("SHOW default_transaction_read_only") == "on"
    out = run_module(capsys, db.params(read_only=False, checks=["invalid_status"], actions=["quarantine"],
                                       fail_on_corruption=True))
    assert out["_rc"] == 1  # the scan found it (before the quarantine), so the database stays read-only
    out = run_module(capsys, db.params(read_only=False, checks=["invalid_status"], fail_on_corruption=True))
    assert out["_rc"] == 0 and out["changed"] is True and out["status"] == "ok"
    assert db.scalar("SHOW default_transaction_read_only") == "off"


def test_a_custom_check_that_writes_fails_the_module_clearly(capsys, db):
    out = run_module(capsys, db.params(checks=["null_prices"], custom=[
        {"name": "purge", "sql": "DELETE FROM trades WHERE status = 'open' RETURNING id"}]))
    assert out["_rc"] == 1 and out["status"] == "error"
    assert out["msg"].startswith("pg_integrity: 1 error(s): purge: custom[0].sql (purge) was refused by PostgreSQL: ")
    assert "A custom check must be ONE read-only query that returns the violating rows" in out["msg"]
    assert "Rewrite custom[0].sql (purge) as such a query and re-run" in out["msg"]
    assert db.scalar("SELECT count(*) FROM trades WHERE status = 'open'") == 12


def test_the_dollar_quote_commit_exploit_deletes_nothing_and_fails_the_task(capsys, db):
    # PostgreSQL reads a€$x$ as one identifier; a Python scanner took $x$ for a dollar quote hiding the rest
    out = run_module(capsys, db.params(checks=["null_prices"], custom=[
        {"name": "ok", "sql": "SELECT id FROM trades WHERE quantity > 6 ORDER BY id"},
        {"name": "sneaky", "sql": "SELECT 1 AS a€$x$; COMMIT; BEGIN READ WRITE; DELETE FROM trades; COMMIT; BEGIN; "
                                  "SAVEPOINT tradeops_pg_integrity; SELECT 1 AS b€$x$"}]))
    assert out["_rc"] == 1 and out["failed"] is True and out["changed"] is False
    assert "sneaky: custom[1].sql (sneaky) was refused by PostgreSQL" in out["msg"]
    assert {c["name"]: c["count"] for c in out["checks"]} == {"null_prices": 0, "ok": 12, "sneaky": 0}
    assert db.scalar("SELECT count(*) FROM trades") == 72


@pytest.mark.parametrize("option, value, needle", [
    ("statement_timeout", "inf", "statement_timeout: must be a finite number of seconds, got inf"),
    ("statement_timeout", "nan", "statement_timeout: must be a finite number of seconds, got nan"),
    ("statement_timeout", 0, "statement_timeout: must be between 0.05 and 86400 seconds, got 0"),
    ("lock_timeout", -5, "lock_timeout: must be between 0.05 and 86400 seconds, got -5"),
    ("lock_timeout", 1e9, "lock_timeout: must be between 0.05 and 86400 seconds, got 1e+09"),
])
def test_a_timeout_that_is_not_finite_and_bounded_fails_naming_it(capsys, db, option, value, needle):
    out = run_module(capsys, db.params(**{option: value}))
    assert out["_rc"] == 1 and out["msg"] == (
        f"pg_integrity: {needle}. Nothing was checked or changed: fix the options and re-run."), out["msg"]
    assert "internal error" not in out["_raw"] and "Traceback" not in out["_raw"]


def test_documentation_parses_and_matches_the_argument_spec():
    import yaml
    from ansible_collections.tradeops.remediation.plugins.doc_fragments.postgres import ModuleDocFragment

    from tests.unit.plugins.modules.test_health_check import _argspec_shape, _doc_options

    doc = yaml.safe_load(pg_integrity.DOCUMENTATION)
    options = dict(doc["options"], **yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"])
    assert _doc_options(options) == _argspec_shape(pg_integrity.ARGUMENT_SPEC)
    schema = doc["options"]["schema"]["suboptions"]
    for option in ("positions_key_column", "trades_key_column", "accounts_key_column", "open_position_status"):
        assert option in schema, option
    assert "identity" in " ".join(schema["positions_key_column"]["description"])
    returns = yaml.safe_load(pg_integrity.RETURN)
    assert "missing_without_key" in " ".join(returns["actions"]["description"])
    for example in yaml.safe_load(pg_integrity.EXAMPLES):
        args = example["tradeops.remediation.pg_integrity"]
        assert set(args) <= set(pg_integrity.ARGUMENT_SPEC), example["name"]
        assert set(args.get("schema", {})) <= set(pg_integrity.SCHEMA_SPEC), example["name"]


def test_a_bad_identifier_fails_naming_the_option(capsys, db):
    out = run_module(capsys, db.params(schema={"trades_table": "trades; DROP TABLE accounts"}))
    assert out["_rc"] == 1
    assert out["msg"].startswith("pg_integrity: schema.trades_table: 'trades; DROP TABLE accounts' is not a table name")
    assert out["msg"].endswith("Nothing was checked or changed: fix the options and re-run.")
    assert db.scalar("SELECT count(*) FROM accounts") == 4


def test_read_only_reports_a_diff_and_is_idempotent(capsys, db):
    args = db.params(read_only=True, checks=[], _ansible_diff=True)
    out = run_module(capsys, args)
    assert out["_rc"] == 0 and out["changed"] is True and out["actions"][0]["verified"] is True
    assert out["diff"]["after"] == {"default_transaction_read_only": "on"}
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        db.execute("DELETE FROM trades")
    out = run_module(capsys, args)
    assert out["_rc"] == 0 and out["changed"] is False
    out = run_module(capsys, db.params(read_only=False, checks=[]))
    assert out["_rc"] == 0 and out["changed"] is True
    db.execute("DELETE FROM trades WHERE id = 1")


def test_quarantine_through_the_module_is_idempotent(capsys, db):
    db.execute("UPDATE trades SET quantity = 0 WHERE id IN (5, 11)")
    args = db.params(checks=["non_positive_quantity"], actions=["quarantine"])
    out = run_module(capsys, args)
    assert out["_rc"] == 0 and out["changed"] is True and out["actions"][0]["tables"][0]["moved"] == 2
    out = run_module(capsys, args)
    assert out["_rc"] == 0 and out["changed"] is False and out["status"] == "ok"
    assert db.scalar("SELECT count(*) FROM trades") + db.scalar("SELECT count(*) FROM tradeops_quarantine.trades") == 72


def test_the_password_never_appears_in_output_or_errors(capsys, db):
    password = db.cluster.info["password"]
    out = run_module(capsys, db.params(custom=[{"name": "leak", "sql": f"SELECT '{password}'::int"}]))
    assert out["_rc"] == 1 and "********" in out["msg"]
    assert password not in out["_raw"]
    out = run_module(capsys, db.params(login_password="wrong-" + password))
    assert out["_rc"] == 1 and "password authentication failed" in out["msg"]
    assert password not in out["_raw"]
    out = run_module(capsys, db.params(login_port=1))
    assert out["_rc"] == 1 and out["msg"].startswith("pg_integrity: postgres ")
    assert password not in out["_raw"]
