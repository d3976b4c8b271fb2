#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_integrity
short_description: Integrity scan of the trading database, and read-only, export, quarantine and reconcile actions
version_added: 0.1.0
description:
  - Runs the data-corruption checks of the runbook (seed 002) on the positions, trades and accounts tables, plus
    O(custom) checks, C(amcheck) on their btree indexes and server checks (checksum failures, long-running queries,
    blocking locks, connection saturation), and returns one result per check with a bounded sample of the offending
    keys.
  - B(It scans in one READ ONLY transaction) (C(REPEATABLE READ, READ ONLY), so every pass sees one snapshot), on a
    session that also starts with C(default_transaction_read_only=on), with O(statement_timeout), O(lock_timeout)
    and C(application_name=tradeops.pg_integrity). Every checked table is locked C(ACCESS SHARE) (what a SELECT
    takes) once, up front, so a table held by another session costs one O(lock_timeout), not one per check.
  - B(The row checks on one table are one pass over it), as one C(count) with a C(FILTER) clause per check, with
    the sample gathered in the same pass (a filtered C(array_agg) of the keys, sliced to O(sample_size)). The pass
    only aggregates the rows that fail at least one of its checks (its C(WHERE) is the C(OR) of their predicates),
    so the predicates are evaluated once per row inside the scan, which PostgreSQL can run in parallel. On positions
    that pass computes V(null_prices), V(non_positive_quantity) and V(future_timestamps); on trades
    V(invalid_status), V(non_positive_quantity) and V(future_timestamps). V(duplicate_ids) (one GROUP BY per
    table), V(orphan_trades) (an anti join to accounts) and V(position_mismatch) (both tables grouped by account
    and symbol, full join) are their own queries. RV(passes) lists every pass with its duration.
  - The built-in row passes read the tables, never an index (index scans are turned off for them), because an
    index may be what is corrupt.
  - "The checks: V(null_prices): positions with a NULL entry or current price. V(invalid_status): trades whose
    status is NULL or not in O(schema.allowed_statuses). V(position_mismatch): (account, symbol) groups whose total
    position quantity differs from the sum of their trades in O(schema.filled_statuses) (sells, per
    O(schema.sell_sides), count negative when O(schema.side_column) is set); a group missing on either side
    counts. V(orphan_trades): trades whose account is NULL or not in the accounts table. V(duplicate_ids): rows
    of positions or trades whose key appears more than once (RV(checks[].count) counts the surplus copies).
    V(non_positive_quantity): trades with a NULL or non-positive quantity; positions with a NULL or negative
    quantity, or zero unless their status is in O(schema.closed_position_statuses). V(future_timestamps):
    timestamps more than O(clock_skew_seconds) in the future."
  - "V(amcheck): C(bt_index_check) (never C(bt_index_parent_check), which blocks writers) on every btree index of
    the three tables; a corrupt index makes the check V(corrupt). Without the extension the check is V(skipped)
    (a distinct status: not ok, not corrupt), unless O(allow_create_extension=true) creates it.
    V(checksum_failures): C(pg_stat_database.checksum_failures) of the database (V(skipped) when the cluster
    has no data checksums). V(long_queries), V(blocking_locks) and V(connection_saturation) are operational
    findings: they report V(warn), never V(corrupt)."
  - The overall RV(status) is V(error) if a check or an action failed (the task then fails, with every result),
    else the worst of V(corrupt), V(warn) and V(ok). Corruption alone fails the task only with
    O(fail_on_corruption=true).
  - "The optional changes run in this order: O(read_only=true) first (contain the writes), the scan, then
    O(actions) (C(export) inside the scan's snapshot, C(reindex), C(quarantine), C(reconcile)), and O(read_only=false) last
    (resume the writes), which is skipped when a step failed or when O(fail_on_corruption=true) found corruption.
    Nothing after a failed step is done."
  - "O(read_only): C(ALTER DATABASE ... SET default_transaction_read_only) on an autocommit session. Sessions
    opened before keep the old default, so they are waited for (O(read_only_sessions=wait), up to
    O(read_only_wait_seconds)) or terminated (V(terminate), C(pg_terminate_backend); never the module's own
    sessions, and only client backends: replication and background workers are left alone). A new session then
    verifies C(SHOW default_transaction_read_only). Nothing is done (RV(ignore:changed=false)) when the database
    setting is already in that state."
  - "C(quarantine): moves the offending rows of the corrupt row checks (O(quarantine_checks)) into
    O(quarantine_schema), in ONE transaction with the tables locked C(SHARE ROW EXCLUSIVE) (readers go on, writers
    wait): creates the schema and a table per source table when missing (C(<schema>.<table>), the source's
    columns plus C(quarantined_at), C(source_table), C(check_name), C(reason), C(incident_id), C(batch_id),
    C(source_ctid)), copies the rows with C(INSERT ... SELECT), and deletes from the source only the rows now in
    the quarantine table (C(DELETE ... USING) the quarantine table, matched by key and ctid). The counts found,
    copied and deleted must agree before COMMIT, else everything is rolled back. Nothing is deleted outright.
    Duplicates keep their first copy (lowest ctid) and move the others; they are moved last, so that the copy kept
    is a good row."
  - "C(reindex): rebuilds, in one transaction, every btree index the V(amcheck) check found corrupt (the indexes of its
    sample, up to O(sample_size)) with C(REINDEX INDEX), and checks each one again with C(bt_index_check); anything
    still corrupt rolls the whole transaction back. An index holds no data of its own, so no row is touched;
    C(REINDEX) blocks the table's writers (readers go on) until COMMIT. It needs the V(amcheck) check in O(checks)
    and the ownership of the tables."
  - "C(reconcile): rewrites, in one transaction, the quantity of every mismatched position that is the only row
    of its (account, symbol) from the sum of its filled trades, after recording the old rows in
    C(<quarantine_schema>.<positions table>__reconciled). An (account, symbol) with filled trades but no position
    row (for example because its corrupt row was quarantined) gets a new position from its trades (entry price
    the quantity-weighted average of O(schema.trade_price_column), current price the latest, status
    O(schema.open_position_status)), recorded there too with an empty old quantity. Groups with several rows or a
    NULL account or symbol are left to a human and counted as C(unreconciled)."
  - "B(Re-creating a missing position needs a positions key column that fills itself) (O(schema.positions_key_column)
    with a default, such as a C(serial) or a sequence, or an identity column): reconcile never invents a key. Without
    one, those (account, symbol) groups are left to a human, counted as C(unreconciled) and named in the message,
    with C(missing_without_key) in the action."
  - "C(export): writes the offending rows (full rows as JSON, per check; C(position_mismatch) its groups, server
    checks their sample) to O(export_path) on the host running the module, mode 0600, atomically. Nothing in the
    file depends on the time, so exporting the same rows again leaves it unchanged."
author:
  - tradeops SRE team (@tradeops)
extends_documentation_fragment:
  - tradeops.remediation.postgres
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - The scan runs normally (it only reads). No action is performed; each reports what it would do, and
        RV(ignore:changed) predicts whether it would change anything.
  diff_mode:
    support: partial
    details:
      - O(read_only) returns the database's C(default_transaction_read_only) before and after.
  idempotent:
    support: full
    details:
      - A second run with the same arguments finds nothing left to rebuild, quarantine or reconcile, the database already
        in the O(read_only) state and the export file already holding the same rows, and reports no change.
options:
  checks:
    description:
      - The built-in checks to run. V([]) runs none (only O(custom), or only the O(read_only) change).
    type: list
    elements: str
    choices: [null_prices, invalid_status, position_mismatch, orphan_trades, duplicate_ids, non_positive_quantity,
              future_timestamps, amcheck, checksum_failures, long_queries, blocking_locks, connection_saturation]
    default: [null_prices, invalid_status, position_mismatch, orphan_trades, duplicate_ids, non_positive_quantity,
              future_timestamps, amcheck, checksum_failures, long_queries, blocking_locks, connection_saturation]
  custom:
    description:
      - Extra checks. Each O(custom[].sql) is ONE read-only query that returns the violating rows (C(SELECT),
        C(VALUES), C(TABLE) or C(WITH ... SELECT), optionally ending with C(;)); RV(checks[].count) is the number of
        rows and RV(checks[].sample) the first column of the first O(sample_size) rows, in the query's order (put
        the key first). Sample values come as PostgreSQL's C(row_to_json) gives them; a non-integer C(numeric)
        comes back as a string, so that no digit is lost.
      - B(The text is never sent as SQL of its own.) It is a parameter of PostgreSQL's C(query_to_xml()), which
        the SERVER parses and runs as a read-only query (SPI with C(read_only)), inside the scan's READ ONLY
        transaction, in a savepoint that is always rolled back. Whatever the text (quotes, comments, dollar quotes,
        non-ASCII names), PostgreSQL refuses anything that is not one read-only query, such as C(INSERT),
        C(UPDATE), C(DELETE), a data-modifying C(WITH), C(SELECT ... FOR UPDATE), C(COMMIT), C(ROLLBACK),
        C(SET), C(RESET), C(DO), C(COPY), C(CALL) or a second statement. A function that writes is refused by
        the READ ONLY transaction. A refused check is V(error), with a message naming O(custom[].sql) by its
        index (C(custom[N].sql)) and saying what a custom check may be, and fails the task; no other check is
        affected.
      - Custom checks can be exported but not quarantined.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: A unique name of letters, digits, C(_), C(.) and C(-); not the name of a built-in check.
        type: str
        required: true
      sql:
        description: The query.
        type: str
        required: true
  schema:
    description:
      - The tables and columns the built-in checks read. The defaults are those of seed 002 and the lab.
      - Every name is validated against a strict pattern (letters, digits, C(_) and C($), at most 63 characters;
        tables may be schema-qualified as C(schema.table)) and then quoted, so it is used exactly as given, case
        included. A bad name fails the task, naming the option, before anything runs.
    type: dict
    suboptions:
      positions_table:
        description: The positions table.
        type: str
        default: positions
      trades_table:
        description: The trades table.
        type: str
        default: trades
      accounts_table:
        description: The accounts table (for V(orphan_trades)).
        type: str
        default: accounts
      key_column:
        description:
          - The key column of every table whose own key option (O(schema.positions_key_column),
            O(schema.trades_key_column), O(schema.accounts_key_column)) is not set.
          - The tables need no unique constraint on their key; V(duplicate_ids) is there because there may be none.
        type: str
        default: id
      positions_key_column:
        description:
          - The key column of the positions table (samples, V(duplicate_ids), C(quarantine), C(reconcile)).
            Default O(schema.key_column).
          - C(reconcile) creates a missing position only when this column fills itself (a default or an identity).
        type: str
      trades_key_column:
        description:
          - The key column of the trades table (samples, V(duplicate_ids), C(quarantine), the export's order).
            Default O(schema.key_column).
        type: str
      accounts_key_column:
        description:
          - The key column of the accounts table, which V(orphan_trades) matches the trades'
            O(schema.account_id_column) against. Default O(schema.key_column).
        type: str
      account_id_column:
        description: The account column of positions and trades.
        type: str
        default: account_id
      symbol_column:
        description: The symbol column of positions and trades.
        type: str
        default: symbol
      quantity_column:
        description: The quantity column of positions and trades.
        type: str
        default: quantity
      status_column:
        description: The status column of positions and trades.
        type: str
        default: status
      entry_price_column:
        description: The entry price column of positions.
        type: str
        default: entry_price
      current_price_column:
        description: The current price column of positions.
        type: str
        default: current_price
      side_column:
        description:
          - The side column of trades. Trades whose side is in O(schema.sell_sides) count negative in
            V(position_mismatch). Set to an empty string to sum quantities unsigned.
        type: str
        default: side
      trades_timestamp_column:
        description: The timestamp of trades for V(future_timestamps); an empty string leaves trades out.
        type: str
        default: created_at
      trade_price_column:
        description: The price of a trade, used by C(reconcile) to price a position it has to create.
        type: str
        default: price
      positions_timestamp_column:
        description: The timestamp of positions for V(future_timestamps); an empty string leaves positions out.
        type: str
        default: updated_at
      allowed_statuses:
        description: The valid trade statuses (V(invalid_status)). A NULL status is invalid too.
        type: list
        elements: str
        default: [open, closed, cancelled]
      filled_statuses:
        description: The trade statuses that count towards positions (V(position_mismatch)).
        type: list
        elements: str
        default: [closed]
      sell_sides:
        description: The values of O(schema.side_column) that reduce a position.
        type: list
        elements: str
        default: [sell]
      closed_position_statuses:
        description: Position statuses for which a zero quantity is valid (V(non_positive_quantity)).
        type: list
        elements: str
        default: [closed]
      open_position_status:
        description:
          - The O(schema.status_column) value C(reconcile) gives a position it creates (for an account and symbol
            with filled trades but no position row).
          - An empty string leaves the column out of the C(INSERT), so that its default applies.
        type: str
        default: open
  sample_size:
    description: The most keys returned in each RV(checks[].sample) (0 to 1000).
    type: int
    default: 10
  clock_skew_seconds:
    description: A timestamp up to this many seconds in the future is tolerated by V(future_timestamps).
    type: float
    default: 60
  long_query_seconds:
    description: V(long_queries) reports the active queries of the database running longer than this.
    type: float
    default: 300
  max_connection_ratio:
    description:
      - V(connection_saturation) warns when the cluster's backends (sum of C(pg_stat_database.numbackends)) divided
        by C(max_connections) is above this ratio.
    type: float
    default: 0.9
  statement_timeout:
    description:
      - Seconds any one statement may run (C(statement_timeout) of every session of the module).
      - A finite number from 0.05 to 86400 (a day); anything else (0, which PostgreSQL reads as no timeout, a
        negative number, C(inf), C(nan)) fails the task naming the option, before anything runs.
    type: float
    default: 30
  lock_timeout:
    description:
      - Seconds to wait for any one lock (C(lock_timeout) of every session of the module). A table locked by another
        session makes its checks V(error) after this long, instead of hanging.
      - A finite number from 0.05 to 86400 (a day), like O(statement_timeout).
    type: float
    default: 5
  allow_create_extension:
    description:
      - Create the C(amcheck) extension (C(CREATE EXTENSION amcheck), which needs the privilege to) when it is
        missing. Without it, V(amcheck) is V(skipped) on a database that lacks the extension.
    type: bool
    default: false
  amcheck_heapallindexed:
    description:
      - Also verify that every table row has its index entry (C(bt_index_check) with C(heapallindexed => true)).
        Slower (it reads the table too) and still takes only an C(ACCESS SHARE) lock.
    type: bool
    default: false
  fail_on_corruption:
    description:
      - Fail the task when a check is V(corrupt), naming the corrupt checks. Off by default, so that the module can
        assess (register the result) as well as gate. A check or action error always fails the task.
    type: bool
    default: false
  read_only:
    description:
      - V(true) makes the database read-only for new sessions before the scan (C(ALTER DATABASE ... SET
        default_transaction_read_only = on)), V(false) makes it writable again after everything else. Unset, the
        setting is left alone.
      - It needs the ownership of the database (or superuser). The module's own changes (C(quarantine),
        C(reconcile)) still work in a read-only database, because they set their transaction READ WRITE explicitly.
    type: bool
  read_only_sessions:
    description:
      - What to do with the sessions of the database opened before the O(read_only) change, which keep the old
        default. V(wait) waits for them to end; V(terminate) ends them with C(pg_terminate_backend) (client
        backends only, never the module's own). Either way, sessions still open after O(read_only_wait_seconds) fail
        the task, naming them.
    type: str
    choices: [wait, terminate]
    default: wait
  read_only_wait_seconds:
    description: How long to wait for the sessions opened before the O(read_only) change to end.
    type: float
    default: 30
  actions:
    description:
      - Changes to make after the scan, in this order; never in check mode, and only when no check errored.
      - V(export) writes the offending rows to O(export_path). V(reindex) rebuilds the indexes V(amcheck) found
        corrupt. V(quarantine) moves the offending rows to O(quarantine_schema). V(reconcile) rewrites mismatched
        position quantities from their filled trades.
    type: list
    elements: str
    choices: [export, reindex, quarantine, reconcile]
    default: []
  export_path:
    description:
      - The JSON file C(export) writes, on the host running the module (with C(delegate_to=localhost), the
        controller). Its directory must exist. Required with C(export).
    type: path
  quarantine_schema:
    description: The schema that receives quarantined rows and the old rows of reconciled positions.
    type: str
    default: tradeops_quarantine
  quarantine_checks:
    description: The row checks whose rows C(quarantine) moves. Default every quarantinable check that ran.
    type: list
    elements: str
    choices: [null_prices, invalid_status, non_positive_quantity, future_timestamps, orphan_trades, duplicate_ids]
  incident_id:
    description: An incident id recorded with every quarantined or reconciled row and in the export.
    type: str
notes:
  - "Run it once, against the primary (C(run_once: true), C(delegate_to: localhost))."
  - The built-in row checks need SELECT on the three tables; the server checks see other sessions' queries with
    C(pg_monitor) or C(pg_read_all_stats); C(amcheck) needs EXECUTE on C(bt_index_check) (or superuser).
  - READ ONLY stops every write of the scan's own transaction. It does not stop functions that act outside it
    (C(dblink), C(pg_terminate_backend)); custom SQL is trusted that far. To take even that away, connect as a
    role that may only read (C(pg_read_all_data), without the privileges of those functions).
  - Custom checks use C(query_to_xml) and C(XMLTABLE), which need a server built with libxml (every PostgreSQL
    package and managed service is); on one without, each custom check is V(error), saying so.
  - O(login_password) never appears in results or messages; query texts of other sessions are shortened and
    their C(PASSWORD '...') literals hidden.
seealso:
  - module: tradeops.remediation.health_check
"""

EXAMPLES = r"""
- name: Assess the trading database (never fails for corruption; register and decide)
  tradeops.remediation.pg_integrity:
    login_host: db.internal
    login_db: trading
    login_user: integrity
    login_password: "{{ vault_pg_integrity_password }}"
    sslmode: verify-full
  run_once: true
  delegate_to: localhost
  register: integrity

- name: Data corruption - read-only, evidence, quarantine, reconcile (the runbook's repair phase)
  tradeops.remediation.pg_integrity:
    login_host: db.internal
    login_db: trading
    login_user: dba
    login_password: "{{ vault_pg_dba_password }}"
    read_only: true
    read_only_sessions: terminate
    allow_create_extension: true
    actions: [export, quarantine, reconcile]
    export_path: "{{ incident_dir }}/corrupt-rows.json"
    incident_id: "{{ incident_id }}"
    custom:
      - name: oversized_trades
        sql: SELECT id FROM trades WHERE quantity * price > 10000000
  run_once: true
  delegate_to: localhost

- name: Gate - clean scan required, then writable again
  tradeops.remediation.pg_integrity:
    login_host: db.internal
    login_db: trading
    login_user: dba
    login_password: "{{ vault_pg_dba_password }}"
    fail_on_corruption: true
    read_only: false
  run_once: true
  delegate_to: localhost

- name: Another schema layout (names are used exactly as given, case included), each table with its own key
  tradeops.remediation.pg_integrity:
    login_host: db.internal
    login_db: ledger
    actions: [reconcile]
    schema:
      positions_table: Book.Holdings
      trades_table: Book.Fills
      accounts_table: Book.Accounts
      positions_key_column: holding_id
      trades_key_column: fill_id
      accounts_key_column: account_no
      status_column: state
      allowed_statuses: [new, filled, cancelled]
      filled_statuses: [filled]
      closed_position_statuses: [flat]
      open_position_status: live
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
status:
  description: V(ok), V(warn), V(corrupt) or V(error) (a check or an action failed; the task then fails).
  returned: always
  type: str
  sample: corrupt
msg:
  description: A one-line summary naming the checks that are not V(ok) and what each action did.
  returned: always
  type: str
  sample: "corrupt: 13 check(s) ran; corrupt: null_prices (positions) 2; skipped: checksum_failures"
database:
  description: The database checked.
  returned: always
  type: str
  sample: trading
checks:
  description: One result per check and table, in the order they ran.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The check (a built-in name, or the O(custom[].name)).
      type: str
      sample: null_prices
    table:
      description: The table it checked (V(position_mismatch) reports the positions table); null for server and custom checks.
      type: str
      sample: positions
    pass:
      description: The pass it ran in (see RV(passes)); the FILTER pass over a table is named after the table.
      type: str
      sample: positions
    status:
      description: V(ok), V(corrupt), V(warn) (server findings), V(error) or V(skipped).
      type: str
      sample: corrupt
    count:
      description:
        - The offending rows (V(duplicate_ids) - the surplus copies; V(position_mismatch) - groups; V(amcheck) - corrupt
          indexes; V(long_queries), V(blocking_locks) - sessions; V(connection_saturation) - backends).
      type: int
      sample: 2
    sample:
      description:
        - At most O(sample_size) offending keys; for V(position_mismatch), V(amcheck) and the server checks, small dicts
          describing each finding.
      type: list
      elements: raw
      sample: [17, 23]
    message:
      description: What was found, or why the check errored or was skipped.
      type: str
      sample: "2 row(s) of positions: entry_price or current_price is NULL"
passes:
  description: The queries the checks ran in, with their duration.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The pass.
      type: str
      sample: trades
    table:
      description: The table it read, if one.
      type: str
      sample: trades
    checks:
      description: The checks it computed.
      type: list
      elements: str
      sample: [invalid_status, non_positive_quantity, future_timestamps]
    duration_ms:
      description: Its duration in milliseconds.
      type: int
      sample: 2900
    status:
      description: V(ok), or V(error) when one of its checks errored.
      type: str
      sample: ok
corrupt:
  description: The names of the V(corrupt) checks.
  returned: always
  type: list
  elements: str
  sample: [null_prices]
warned:
  description: The names of the V(warn) checks.
  returned: always
  type: list
  elements: str
  sample: [long_queries]
skipped_checks:
  description:
    - The names of the V(skipped) checks.
    - Not C(skipped), which Ansible reserves for the task status (a non-empty list would mark the task skipped).
  returned: always
  type: list
  elements: str
  sample: [checksum_failures]
errors:
  description: One message per failed check or action.
  returned: always
  type: list
  elements: str
  sample: []
actions:
  description:
    - What each change did (or, in check mode, would do), in order. Every item has C(action) (V(read_only),
      V(create_extension), V(export), V(reindex), V(quarantine) or V(reconcile)), C(status), C(changed) and
      C(message).
    - V(read_only) adds C(before), C(after), C(verified), C(stale_sessions) and C(terminated); V(quarantine) adds
      C(schema), C(batch_id), C(moved) (per check - C(found_in_scan), C(found), C(moved)) and C(tables);
      V(reconcile) adds C(reconciled), C(created), C(unreconciled), C(table), C(batch_id) and, when the positions key
      has no default, C(missing_without_key); V(export) adds C(path) and C(checks);
      V(reindex) adds C(indexes) (the ones rebuilt).
  returned: always
  type: list
  elements: dict
  sample:
    - action: quarantine
      status: ok
      changed: true
      message: "moved 2 row(s) to tradeops_quarantine in one transaction (batch 5f...): null_prices on positions: 2"
incident_id:
  description: The O(incident_id) given.
  returned: always
  type: str
  sample: INC-20240601-001
elapsed_ms:
  description: Wall time of the whole call, in milliseconds.
  returned: always
  type: int
  sample: 3120
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_checks import (
    ACTIONS,
    BUILTIN_CHECKS,
    QUARANTINABLE,
    SCHEMA_DEFAULTS,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_integrity import IntegrityService
from ansible_collections.tradeops.remediation.plugins.module_utils._postgres import postgres_connection_spec

SCHEMA_SPEC = dict(
    positions_table=dict(type="str", default="positions"),
    trades_table=dict(type="str", default="trades"),
    accounts_table=dict(type="str", default="accounts"),
    key_column=dict(type="str", default="id", no_log=False),
    positions_key_column=dict(type="str", no_log=False),
    trades_key_column=dict(type="str", no_log=False),
    accounts_key_column=dict(type="str", no_log=False),
    account_id_column=dict(type="str", default="account_id"),
    symbol_column=dict(type="str", default="symbol"),
    quantity_column=dict(type="str", default="quantity"),
    status_column=dict(type="str", default="status"),
    entry_price_column=dict(type="str", default="entry_price"),
    current_price_column=dict(type="str", default="current_price"),
    side_column=dict(type="str", default="side"),
    trades_timestamp_column=dict(type="str", default="created_at"),
    trade_price_column=dict(type="str", default="price"),
    positions_timestamp_column=dict(type="str", default="updated_at"),
    allowed_statuses=dict(type="list", elements="str", default=list(SCHEMA_DEFAULTS["allowed_statuses"])),
    filled_statuses=dict(type="list", elements="str", default=list(SCHEMA_DEFAULTS["filled_statuses"])),
    sell_sides=dict(type="list", elements="str", default=list(SCHEMA_DEFAULTS["sell_sides"])),
    closed_position_statuses=dict(type="list", elements="str",
                                  default=list(SCHEMA_DEFAULTS["closed_position_statuses"])),
    open_position_status=dict(type="str", default="open"),
)

ARGUMENT_SPEC = dict(
    checks=dict(type="list", elements="str", choices=list(BUILTIN_CHECKS), default=list(BUILTIN_CHECKS)),
    custom=dict(type="list", elements="dict", default=[], options=dict(
        name=dict(type="str", required=True),
        sql=dict(type="str", required=True),
    )),
    schema=dict(type="dict", apply_defaults=True, options=SCHEMA_SPEC),
    sample_size=dict(type="int", default=10),
    clock_skew_seconds=dict(type="float", default=60),
    long_query_seconds=dict(type="float", default=300),
    max_connection_ratio=dict(type="float", default=0.9),
    statement_timeout=dict(type="float", default=30),
    lock_timeout=dict(type="float", default=5),
    allow_create_extension=dict(type="bool", default=False),
    amcheck_heapallindexed=dict(type="bool", default=False),
    fail_on_corruption=dict(type="bool", default=False),
    read_only=dict(type="bool"),
    read_only_sessions=dict(type="str", choices=["wait", "terminate"], default="wait"),
    read_only_wait_seconds=dict(type="float", default=30),
    actions=dict(type="list", elements="str", choices=list(ACTIONS), default=[]),
    export_path=dict(type="path"),
    quarantine_schema=dict(type="str", default="tradeops_quarantine"),
    quarantine_checks=dict(type="list", elements="str", choices=list(QUARANTINABLE)),
    incident_id=dict(type="str"),
)
ARGUMENT_SPEC.update(postgres_connection_spec())


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        service = IntegrityService(module.params, check_mode=module.check_mode)
        result = service.run()
    except ValidationError as err:
        module.fail_json(msg="pg_integrity: %s. Nothing was checked or changed: fix the options and re-run." % err)
    except TradeopsError as err:
        module.fail_json(msg="pg_integrity: %s" % err)

    # `skipped` is Ansible's own task status: a non-empty list there would mark the task skipped
    result["skipped_checks"] = result.pop("skipped", [])
    diff = result.pop("diff", None)
    if module._diff and diff is not None:
        result["diff"] = diff
    message = IntegrityService.failure_message(result, module.params["fail_on_corruption"])
    if message:
        # the results come back with the failure; its msg says what failed and what to do next
        result["msg"] = "pg_integrity: %s" % message
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
