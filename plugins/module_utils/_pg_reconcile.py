# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``pg_integrity``'s reconcile action: positions set to what the filled trades add up to (and the
missing ones created), recorded in a reconcile table, in one transaction verified before COMMIT.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import uuid

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_checks import (
    _mismatch_cte,
    ERROR,
    OK,
    psycopg2,
    RECONCILE_COLUMNS,
    sql,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_repair import Rollback
from ansible_collections.tradeops.remediation.plugins.module_utils._redact import redact


class Reconciler:
    """Mixed into :class:`IntegrityService` after :class:`Repairs`, whose table helpers it uses."""

    def reconcile(self):
        action = {"action": "reconcile", "changed": False, "status": OK, "reconciled": 0, "unreconciled": 0}
        scanned = self._corrupt_results(("position_mismatch",))
        if not scanned:
            action["message"] = "no position mismatch to reconcile"
            return action
        if self.check_mode:
            action["changed"] = True
            action["message"] = ("would rewrite the quantity of up to %d position(s) from their filled trades, "
                                 "recording the old rows in %s (check mode)" % (scanned[0]["count"],
                                                                                self.quarantine_schema))
            return action
        conn = self.writer()
        conn.autocommit = False
        batch = uuid.uuid4().hex
        s = self.schema
        try:
            cur = conn.cursor()
            cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE")
            self._lock(cur, ["positions", "trades"], "SHARE ROW EXCLUSIVE")
            cur.execute(_mismatch_cte(s) + sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE position_rows = 1 AND account_id IS NOT NULL "
                "AND symbol IS NOT NULL) FROM m"))
            mismatched, fixable = cur.fetchone()
            cur.execute(_mismatch_cte(s) + sql.SQL(
                "SELECT count(*) FROM m WHERE position_rows = 0 AND account_id IS NOT NULL AND symbol IS NOT NULL "
                "AND trades_quantity <> 0"))
            missing = cur.fetchone()[0]
            no_key = ""
            if missing and not self._key_has_default(cur):
                # a new position needs a key that fills itself: left to a human, saying why
                no_key = ("; %d account/symbol(s) have filled trades but no position, and %s.%s has no default or "
                          "identity, so reconcile cannot create their positions (give the key column a default or "
                          "make it an identity column, or create the rows by hand)" % (
                              missing, s.label("positions"), s.keys["positions"]))
                action["missing_without_key"] = missing
                missing = 0
            action["unreconciled"] = mismatched - fixable - missing
            if not fixable and not missing:
                conn.rollback()
                action["message"] = ("nothing reconcilable: %d mismatch(es) need a human (no position row, several "
                                     "rows, or a NULL account/symbol)%s" % (mismatched, no_key))
                return action
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.quarantine_schema)))
            extra = ("reconciled_at timestamptz NOT NULL DEFAULT now(), source_table text NOT NULL, old_quantity "
                     "numeric, new_quantity numeric, incident_id text, batch_id text NOT NULL, source_ctid tid")
            table, label, cols = self._ensure_table(cur, "positions", extra, RECONCILE_COLUMNS, "__reconciled")
            cur.execute(_mismatch_cte(s) + sql.SQL(
                "INSERT INTO {q} ({cols}, reconciled_at, source_table, old_quantity, new_quantity, incident_id, "
                "batch_id, source_ctid) SELECT {scols}, now(), {src}, {qty}, m.trades_quantity, {incident}, {batch}, "
                "s.ctid FROM {positions} AS s JOIN m ON m.account_id = {acc} AND m.symbol = {sym} "
                "WHERE m.position_rows = 1").format(
                q=table, cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                scols=sql.SQL(", ").join(sql.Identifier("s", c) for c in cols), src=sql.Literal(s.label("positions")),
                qty=s.col("quantity"), incident=sql.Literal(self.incident_id), batch=sql.Literal(batch),
                positions=s.table("positions"), acc=s.col("account_id"), sym=s.col("symbol")))
            recorded = cur.rowcount
            cur.execute(sql.SQL(
                "UPDATE {positions} AS s SET {qty} = r.new_quantity FROM {q} AS r WHERE r.batch_id = {batch} "
                "AND s.ctid = r.source_ctid AND s.{key} IS NOT DISTINCT FROM r.{key}").format(
                positions=s.table("positions"), qty=sql.Identifier(s.columns["quantity"]), q=table,
                batch=sql.Literal(batch), key=s.key("positions", None)))
            updated = cur.rowcount
            if not fixable == recorded == updated:
                raise Rollback("found %d reconcilable position(s), recorded %d in %s, updated %d" % (
                    fixable, recorded, label, updated))
            created = self._create_missing_positions(cur, table, cols, batch) if missing else 0
            if created != missing:
                raise Rollback("found %d account/symbol(s) with filled trades but no position, created %d" % (
                    missing, created))
            conn.commit()
        except Rollback as err:
            conn.rollback()
            action.update(status=ERROR, message="reconcile rolled back, nothing was changed: the counts did not "
                                                "match (%s); set read_only: true first and re-run" % err)
            return action
        except (psycopg2.Error, TradeopsError) as err:
            conn.rollback()
            message = self._db_error(err) if isinstance(err, psycopg2.Error) else redact(str(err), self.secrets)
            action.update(status=ERROR, message="reconcile rolled back, nothing was changed: %s" % message)
            return action
        finally:
            conn.autocommit = True
        action.update(changed=True, reconciled=updated, created=created, table=label, batch_id=batch,
                      message="rewrote the quantity of %d position(s) and created %d missing position(s) from their "
                              "filled trades in one transaction; the old and new rows are recorded in %s (batch %s)%s%s"
                              % (updated, created, label, batch,
                                  "; %d mismatch(es) need a human (no position row, several rows, or a NULL "
                                  "account/symbol)" % action["unreconciled"] if action["unreconciled"] else "",
                                  no_key))
        return action

    def _key_has_default(self, cur):
        """Whether the positions key column fills itself (a default, an identity or a generated column).

        The table is looked up by its QUOTED name (``"Book"."Holdings"``): to_regclass() folds an unquoted
        name to lower case, which would find nothing, or another table (``book.holdings``)."""
        cur.execute("SELECT a.atthasdef OR a.attidentity <> '' FROM pg_attribute a "
                    "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped",
                    (self.schema.table("positions").as_string(cur), self.schema.keys["positions"]))
        row = cur.fetchone()
        return bool(row and row[0])

    def _create_missing_positions(self, cur, table, cols, batch):
        """Create the position of every (account, symbol) that has filled trades but no position row
        (for example because its corrupt row was quarantined): quantity from the trades, entry price
        their quantity-weighted average, current price the latest. Each is recorded in the reconcile
        table with an empty old quantity. Returns how many were created."""
        s = self.schema
        target = [s.columns["account_id"], s.columns["symbol"], s.columns["quantity"], s.columns["entry_price"],
                  s.columns["current_price"]]
        values = [sql.SQL("m.account_id"), sql.SQL("m.symbol"), sql.SQL("m.trades_quantity"),
                  sql.SQL("tp.avg_price"), sql.SQL("tp.last_price")]
        if s.open_position_status:  # '' leaves the status to the column's default
            target.append(s.columns["status"])
            values.append(sql.Literal(s.open_position_status))
        if s.has("positions_timestamp"):
            target.append(s.columns["positions_timestamp"])
            values.append(sql.SQL("now()"))
        order = s.col("trades_timestamp") if s.has("trades_timestamp") else s.key("trades")
        price = sql.Identifier("s", s.columns["trade_price"])
        cur.execute(self._create_sql(s, target, values, order, price, cols, table, batch))
        return cur.rowcount

    def _create_sql(self, s, target, values, order, price, cols, table, batch):
        return _mismatch_cte(s) + sql.SQL(
            ", tp AS (SELECT {tacc} AS account_id, {tsym} AS symbol, "
            "sum({qty_s} * {price}) / nullif(sum({qty_s}), 0) AS avg_price, "
            "(array_agg({price} ORDER BY {order} DESC))[1] AS last_price "
            "FROM {trades} AS s WHERE {tst}::text = ANY({filled}) GROUP BY 1, 2), "
            "ins AS (INSERT INTO {positions} ({target}) SELECT {values} FROM m JOIN tp "
            "ON tp.account_id = m.account_id AND tp.symbol = m.symbol WHERE m.position_rows = 0 "
            "AND m.account_id IS NOT NULL AND m.symbol IS NOT NULL AND m.trades_quantity <> 0 RETURNING *, ctid) "
            "INSERT INTO {rtable} ({cols}, reconciled_at, source_table, old_quantity, new_quantity, incident_id, "
            "batch_id, source_ctid) SELECT {icols}, now(), {src}, NULL, ins.{qty}, {incident}, {batch}, ins.ctid "
            "FROM ins").format(
            tacc=s.col("account_id"), tsym=s.col("symbol"), qty_s=s.col("quantity"), price=price, order=order,
            trades=s.table("trades"), tst=s.col("status"), filled=s.literal_list("filled_statuses"),
            positions=s.table("positions"), target=sql.SQL(", ").join(sql.Identifier(c) for c in target),
            values=sql.SQL(", ").join(values), rtable=table,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
            icols=sql.SQL(", ").join(sql.Identifier("ins", c) for c in cols), src=sql.Literal(s.label("positions")),
            qty=sql.Identifier(s.columns["quantity"]), incident=sql.Literal(self.incident_id),
            batch=sql.Literal(batch))
