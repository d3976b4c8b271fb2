"""The lab's database faults against its real PostgreSQL: corrupt-rows, index-corruption, long-query,
blocking-lock.

The integrity checks are written here, independently of any scanner: a fresh lab must pass all of them,
and corrupt-rows must make each flag exactly the rows it recorded. The faults that change the database
use their own lab (``dblab``), so the session's lab stays clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pytest

from tradeops.cli import main
from tradeops.lab import Lab, LabError, LabInputError
from tradeops.lab.dbfaults import DEFAULT_CORRUPT_COUNTS, corrupt_index_page
from tradeops.lab.procs import pid_alive

from .helpers import assert_trading, wait_until

# -- the integrity checks, as SQL of our own ---------------------------------------------------------------

Row = tuple[str, int]  # (table, id)

CHECKS: dict[str, str] = {
    "null_prices": "SELECT 'positions', id FROM positions WHERE entry_price IS NULL OR current_price IS NULL",
    "invalid_status": "SELECT 'trades', id FROM trades"
    " WHERE status IS NULL OR status NOT IN ('open', 'closed', 'cancelled')",
    # Per position row: its quantity against the plain sum of its account's closed trades in its symbol.
    "position_mismatch": "SELECT 'positions', p.id FROM positions p WHERE p.quantity IS DISTINCT FROM ("
    " SELECT coalesce(sum(t.quantity), 0) FROM trades t"
    " WHERE t.account_id = p.account_id AND t.symbol = p.symbol AND t.status = 'closed')",
    "orphan_trades": "SELECT 'trades', id FROM trades t"
    " WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.account_id)",
    "duplicate_ids": "SELECT 'trades', id FROM trades GROUP BY id HAVING count(*) > 1"
    " UNION ALL SELECT 'positions', id FROM positions GROUP BY id HAVING count(*) > 1",
    "non_positive_quantity": "SELECT 'trades', id FROM trades WHERE quantity <= 0"
    " UNION ALL SELECT 'positions', id FROM positions WHERE quantity <= 0",
    "future_timestamps": "SELECT 'trades', id FROM trades WHERE created_at > now()"
    " UNION ALL SELECT 'positions', id FROM positions WHERE updated_at > now()",
}
# The position check read per (account_id, symbol) instead, both ways round (FULL JOIN), and signed.
MISMATCHED_PAIRS = """
SELECT count(*) FROM (SELECT account_id, symbol, sum(quantity) AS q FROM positions GROUP BY 1, 2) p
FULL JOIN (SELECT account_id, symbol, sum(quantity) AS q, sum(CASE WHEN side = 'buy' THEN quantity ELSE -quantity END)
           AS signed FROM trades WHERE status = 'closed' GROUP BY 1, 2) t USING (account_id, symbol)
WHERE p.q IS DISTINCT FROM t.q OR p.q IS DISTINCT FROM t.signed
"""


def run_checks(lab: Lab) -> dict[str, set[Row]]:
    conn = lab.pg_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = '5s'")
            out = {}
            for kind, sql in CHECKS.items():
                cur.execute(sql)
                out[kind] = {(table, int(rid)) for table, rid in cur.fetchall()}
            return out
    finally:
        conn.close()


def scalar(lab: Lab, sql: str, params: tuple[Any, ...] = ()) -> Any:
    conn = lab.pg_connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '5s'")
            cur.execute(sql, params)
            row = cur.fetchone()
            return None if row is None else row[0]
    finally:
        conn.close()


def amcheck(lab: Lab, index: str) -> None:
    """bt_index_check(index); raises psycopg2.errors.IndexCorrupted on corruption."""
    conn = lab.pg_connect()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            cur.execute("SELECT bt_index_check(%s::regclass)", (index,))
    finally:
        conn.close()


def recorded_rows(entry: dict[str, Any]) -> set[Row]:
    return {(table, rid) for table, ids in entry["ids"].items() for rid in ids}


@pytest.fixture(scope="module")
def dblab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    the_lab = Lab(tmp_path_factory.mktemp("db-faults-lab") / "lab")
    the_lab.up(engines=2, order_interval=0.05)
    try:
        yield the_lab
    finally:
        the_lab.down()


# -- a fresh lab -------------------------------------------------------------------------------------------


def test_a_fresh_lab_passes_every_integrity_check(lab: Lab) -> None:
    assert run_checks(lab) == {kind: set() for kind in CHECKS}
    assert scalar(lab, MISMATCHED_PAIRS) == 0
    assert scalar(lab, "SELECT count(*) FROM trades WHERE status = 'closed' AND side <> 'buy'") == 0
    assert 2000 <= scalar(lab, "SELECT count(*) FROM trades") <= 4000
    assert scalar(lab, "SELECT count(*) FROM positions") == 100
    # The schema can hold what the checks look for: no primary key on id, no foreign key to accounts.
    constraints = scalar(
        lab,
        "SELECT array_agg(conname::text ORDER BY 1) FROM pg_constraint"
        " WHERE conrelid IN ('trades'::regclass, 'positions'::regclass) AND contype IN ('p', 'u', 'f')",
    )
    assert constraints is None
    assert scalar(lab, "SELECT indisunique FROM pg_index WHERE indexrelid = 'trades_id_idx'::regclass") is False
    # amcheck passes on every btree index of both tables (in a transaction that is rolled back).
    conn = lab.pg_connect()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            cur.execute(
                "SELECT c.relname, bt_index_check(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_am am ON am.oid = c.relam WHERE am.amname = 'btree'"
                " AND i.indrelid IN ('trades'::regclass, 'positions'::regclass)"
            )
            assert {r[0] for r in cur.fetchall()} >= {"trades_id_idx", "positions_id_idx"}
        conn.rollback()
    finally:
        conn.close()


# -- corrupt-rows --------------------------------------------------------------------------------------------


def test_corrupt_rows_makes_each_check_flag_exactly_the_recorded_rows(dblab: Lab) -> None:
    before = run_checks(dblab)
    pairs_before = scalar(dblab, MISMATCHED_PAIRS)
    result = dblab.inject("corrupt-rows")
    after = run_checks(dblab)

    record = json.loads((dblab.lab_dir / "faults" / "corrupt-rows.json").read_text())
    assert result["record"] == str(dblab.lab_dir / "faults" / "corrupt-rows.json")
    assert {k: v for k, v in result.items() if k != "record"} == record
    assert {kind: entry["count"] for kind, entry in record["kinds"].items()} == DEFAULT_CORRUPT_COUNTS
    assert record["total"] == sum(DEFAULT_CORRUPT_COUNTS.values()) == 21
    for kind, entry in record["kinds"].items():
        rows = recorded_rows(entry)
        assert len(rows) == entry["count"], kind
        assert after[kind] - before[kind] == rows, kind  # exactly the recorded rows, no more
        assert before[kind] <= after[kind], kind
    assert scalar(dblab, MISMATCHED_PAIRS) - pairs_before == DEFAULT_CORRUPT_COUNTS["position_mismatch"]
    # Both tables carry duplicate ids and future timestamps; each duplicated id appears exactly twice.
    dup = record["kinds"]["duplicate_ids"]
    assert set(dup["ids"]) == {"trades", "positions"} == set(record["kinds"]["future_timestamps"]["ids"])
    for table, ids in dup["ids"].items():
        assert scalar(dblab, f"SELECT count(*) FROM {table} WHERE id = ANY(%s)", (ids,)) == 2 * len(ids)
        assert scalar(dblab, f"SELECT count(*) FROM {table} WHERE id = ANY(%s)", (dup["renamed_from"][table],)) == 0
    # No row is hit by two kinds.
    hit = [r for entry in record["kinds"].values() for r in recorded_rows(entry)]
    hit += [(table, rid) for table, ids in dup["renamed_from"].items() for rid in ids]
    assert len(hit) == len(set(hit))


def test_corrupt_rows_kinds_and_counts_from_the_cli(dblab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(dblab.lab_dir)
    before = run_checks(dblab)
    argv = ["lab", "inject", "corrupt-rows", "--dir", d, "--kinds", "null_prices,orphan_trades"]
    assert main([*argv, "--count", "2", "--count", "orphan_trades=6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {k: v["count"] for k, v in result["kinds"].items()} == {"null_prices": 2, "orphan_trades": 6}
    after = run_checks(dblab)
    for kind in CHECKS:
        expected = recorded_rows(result["kinds"][kind]) if kind in result["kinds"] else set()
        assert after[kind] - before[kind] == expected, kind
    record = json.loads((dblab.lab_dir / "faults" / "corrupt-rows.json").read_text())
    assert record["kinds"] == result["kinds"] and len(record["earlier"]) >= 1  # earlier injections are kept

    assert main(["lab", "inject", "corrupt-rows", "--dir", d, "--kinds", "future_timestamps", "--count", "1"]) == 0
    out = capsys.readouterr().out
    assert "corrupt-rows injected: 1 bad rows" in out and "future_timestamps" in out

    assert main(["lab", "inject", "corrupt-rows", "--clear", "--dir", d]) == 3
    assert "playbook" in capsys.readouterr().err
    assert main(["lab", "inject", "corrupt-rows", "engine-001", "--dir", d]) == 3
    assert "takes no engine names" in capsys.readouterr().err
    assert main(["lab", "inject", "corrupt-rows", "--all", "--dir", d]) == 3
    assert main(["lab", "inject", "corrupt-rows", "--kinds", "bogus", "--dir", d]) == 3
    assert main(["lab", "inject", "corrupt-rows", "--count", "0", "--dir", d]) == 3
    assert main(["lab", "inject", "corrupt-rows", "--count", "x=y", "--dir", d]) == 3
    assert main([*argv[:5], "--kinds", "null_prices", "--count", "orphan_trades=1"]) == 3
    assert main(["lab", "inject", "latency", "engine-001", "--count", "2", "--dir", d]) == 3
    capsys.readouterr()


# -- index-corruption ----------------------------------------------------------------------------------------


def test_index_corruption_fails_amcheck_engines_keep_writing_and_clear_reindexes(dblab: Lab) -> None:
    amcheck(dblab, "trades_id_idx")  # healthy before
    old_pid = dblab.state["postgres"]["pid"]
    dblab.inject("long-query")  # the restart ends it
    result = dblab.inject("index-corruption")
    try:
        with pytest.raises(psycopg2.errors.IndexCorrupted):
            amcheck(dblab, "trades_id_idx")
        st = dblab.state
        assert st["postgres"]["pid"] != old_pid and pid_alive(st["postgres"]["pid"]) and not pid_alive(old_pid)
        assert result["postgres_pid"] == st["postgres"]["pid"]
        datadir = Path(st["postgres"]["datadir"]).resolve()
        assert Path(result["path"]).is_relative_to(datadir) and result["path"].endswith(result["relation_file"])
        assert result["index"] == "trades_id_idx" and result["block"] == 1 and result["amcheck"]["status"] == "corrupt"
        assert result["engines_reconnected_s"] is not None and result["ended_sessions"] == ["long-query"]
        record = json.loads((dblab.lab_dir / "faults" / "index-corruption.json").read_text())
        assert record == {k: v for k, v in result.items() if k != "record"}
        assert not (dblab.lab_dir / "faults" / "long-query.json").exists()
        since = time.time()
        for name in ("engine-001", "engine-002"):
            assert_trading(dblab, name, since, orders=3)
        faults = dblab.status()["db_faults"]
        assert faults["index-corruption"]["active"] is True and "long-query" not in faults
        assert dblab.inject("index-corruption")["already"] is True  # no second restart
        assert dblab.state["postgres"]["pid"] == st["postgres"]["pid"]
    finally:
        cleared = dblab.inject("index-corruption", clear=True)
    assert cleared["cleared"] is True and cleared["amcheck"]["status"] == "ok"
    amcheck(dblab, "trades_id_idx")
    assert "index-corruption" not in dblab.status()["db_faults"]
    assert not (dblab.lab_dir / "faults" / "index-corruption.json").exists()


def test_index_corruption_that_fails_still_restarts_postgres_and_records_its_pid(
    dblab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tradeops.lab import dbfaults

    def broken(*args: object) -> dict[str, Any]:
        raise LabError("simulated failure while the cluster is stopped")

    old_pid = dblab.state["postgres"]["pid"]
    monkeypatch.setattr(dbfaults, "corrupt_index_page", broken)
    with pytest.raises(LabError, match="simulated failure"):
        dblab.inject("index-corruption")
    new_pid = dblab.state["postgres"]["pid"]
    assert new_pid != old_pid and pid_alive(new_pid)  # `down` can still find and stop it
    assert not (dblab.lab_dir / "faults" / "index-corruption.json").exists()
    amcheck(dblab, "trades_id_idx")
    since = time.time()
    assert_trading(dblab, "engine-001", since)


def test_index_page_corruption_stays_inside_the_data_directory(tmp_path: Path) -> None:
    datadir = tmp_path / "data"
    (datadir / "base").mkdir(parents=True)
    (datadir / "PG_VERSION").write_text("15\n")
    outside = tmp_path / "outside"
    outside.write_bytes(bytes(3 * 8192))
    os.symlink(outside, datadir / "base" / "escape")
    for rel in ("../outside", str(outside), "base/escape"):
        with pytest.raises(LabError, match="refusing"):
            corrupt_index_page(datadir, rel, 8192)
    (datadir / "base" / "empty").write_bytes(bytes(3 * 8192))
    with pytest.raises(LabError, match="no btree leaf page"):
        corrupt_index_page(datadir, "base/empty", 8192)
    (datadir / "postmaster.pid").write_text("1\n")
    with pytest.raises(LabError, match="stop the cluster"):
        corrupt_index_page(datadir, "base/empty", 8192)
    assert outside.read_bytes() == bytes(3 * 8192)


# -- long-query and blocking-lock ---------------------------------------------------------------------------


def test_long_query_outlives_the_cli_and_clear_cancels_it(dblab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(dblab.lab_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "tradeops.cli", "lab", "inject", "long-query", "--dir", d, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    injected = json.loads(proc.stdout)
    pid = injected["backend_pid"]
    assert injected["application_name"] == "tradeops-lab-long-query" and injected["seconds"] == 600
    sql = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'tradeops-lab-long-query' AND state = 'active'"
        " AND query LIKE 'SELECT pg_sleep(%%' AND now() - query_start > interval '3 seconds'"
    )
    try:
        assert wait_until(lambda: scalar(dblab, sql), 10.0, "a long query older than 3 s") == pid
        faults = dblab.status()["db_faults"]
        assert faults["long-query"]["active"] is True and faults["long-query"]["query_age_s"] > 3
        assert main(["lab", "status", "--dir", d]) == 0
        assert f"db fault long-query ACTIVE: backend {pid}" in capsys.readouterr().out
        assert dblab.inject("long-query")["already"] is True
    finally:
        assert main(["lab", "inject", "long-query", "--clear", "--dir", d]) == 0
    assert "long-query cleared" in capsys.readouterr().out
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tradeops-lab-long-query'"
    assert scalar(dblab, count) == 0
    assert "long-query" not in dblab.status()["db_faults"]
    assert not (dblab.lab_dir / "faults" / "long-query.json").exists()
    assert dblab.inject("long-query", clear=True)["cleared"] is False  # nothing to clear: fine


def test_blocking_lock_blocks_a_reader_not_the_engines_and_clear_releases_it(dblab: Lab) -> None:
    result = dblab.inject("blocking-lock")
    blocker, waiter = result["blocker_pid"], result["waiter_pid"]
    try:
        conn = dblab.pg_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT l.pid, pg_blocking_pids(l.pid), a.application_name FROM pg_locks l"
                    " JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted"
                )
                ungranted = cur.fetchall()
                assert (waiter, [blocker], "tradeops-lab-blocked") in ungranted
                cur.execute(
                    "SELECT l.mode, l.granted, a.application_name, a.state FROM pg_locks l"
                    " JOIN pg_stat_activity a USING (pid) WHERE l.pid = %s AND l.relation = 'trades'::regclass",
                    (blocker,),
                )
                assert cur.fetchall() == [("AccessExclusiveLock", True, "tradeops-lab-blocker", "idle in transaction")]
            conn.rollback()
        finally:
            conn.close()
        with pytest.raises(LabError, match="locked"):
            dblab.inject("corrupt-rows", count=1)  # lock_timeout, not a hang
        since = time.time()
        for name in ("engine-001", "engine-002"):  # orders is another table
            assert_trading(dblab, name, since, orders=3)
        assert dblab.status()["db_faults"]["blocking-lock"]["active"] is True
    finally:
        cleared = dblab.inject("blocking-lock", clear=True)
    assert cleared["cleared"] is True and cleared["waiter_outcome"] == "finished"
    assert scalar(dblab, "SELECT count(*) FROM pg_locks WHERE NOT granted") == 0
    assert scalar(dblab, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", ([blocker, waiter],)) == 0
    assert scalar(dblab, "SELECT count(*) FROM trades") > 0
    assert "blocking-lock" not in dblab.status()["db_faults"]


def test_db_faults_reject_engine_names_and_foreign_options(dblab: Lab) -> None:
    for fault in ("corrupt-rows", "index-corruption", "long-query", "blocking-lock"):
        with pytest.raises(LabInputError, match="takes no engine names"):
            dblab.inject(fault, ["engine-001"])
        with pytest.raises(LabInputError, match="takes no engine names"):
            dblab.inject(fault, "*")
    with pytest.raises(LabInputError, match="playbook"):
        dblab.inject("corrupt-rows", clear=True)
    with pytest.raises(LabInputError, match="kinds"):
        dblab.inject("long-query", kinds="null_prices")
    with pytest.raises(LabInputError, match="seconds"):
        dblab.inject("blocking-lock", seconds=5)
    with pytest.raises(LabInputError, match="seconds"):
        dblab.inject("long-query", seconds=0)
    with pytest.raises(LabInputError):
        dblab.inject("corrupt-rows", count={"null_prices": 41})
    with pytest.raises(LabInputError):
        dblab.inject("latency", ["engine-001"], count=3)
    with pytest.raises(LabInputError):
        dblab.inject("latency")  # an engine fault still needs engines
    with pytest.raises(LabInputError, match="database fault"):
        Lab(dblab.lab_dir.parent / "never").up(engines=1, faults={"engine-001": "long-query"})
    assert dblab.status()["db_faults"].keys() <= {"corrupt-rows"}


# -- down ----------------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_down_ends_the_fault_sessions_and_leaves_no_postgres_processes(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab")
    try:
        st = lab.up(engines=1, order_interval=0.05)
        sessions = [lab.inject("long-query", seconds=300)["backend_pid"]]
        blocking = lab.inject("blocking-lock")
        sessions += [blocking["blocker_pid"], blocking["waiter_pid"]]
        postmaster = st["postgres"]["pid"]
        backends = _children(postmaster)
        assert set(sessions) <= set(backends)
        datadir = Path(st["postgres"]["datadir"])
    finally:
        lab.down()
    for pid in [postmaster, *backends, st["engines_pid"], st["redis"]["pid"]]:
        assert not pid_alive(pid), f"process {pid} survived `lab down`"
    assert not datadir.exists() and not lab.lab_dir.exists()
