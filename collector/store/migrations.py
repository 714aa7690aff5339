"""Versioned schema of the store, for both engines.

``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``; the version
in place is SQLite's ``PRAGMA user_version`` (PostgreSQL: ``loa_schema.version``;
``collector.store.postgres.pg_migration`` maps each step's DDL). Migrations only ever append: a
released step is never edited, a change is a new step.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema.
    """
    CREATE TABLE inventory (
        device_id    TEXT PRIMARY KEY,
        commune_code TEXT NOT NULL,
        commune_name TEXT NOT NULL,
        commune_kind TEXT NOT NULL,
        district     TEXT NOT NULL DEFAULT '',
        province     TEXT NOT NULL DEFAULT '',
        address      TEXT NOT NULL DEFAULT '',
        latitude     REAL,
        longitude    REAL,
        contractor   TEXT NOT NULL DEFAULT '',
        sim_iccid    TEXT NOT NULL DEFAULT '',
        sim_phone    TEXT NOT NULL DEFAULT '',
        install_date TEXT NOT NULL DEFAULT '',
        position     INTEGER NOT NULL
    );
    CREATE INDEX inventory_commune ON inventory(commune_code);

    -- Latest fold state per device that ever sent anything.
    CREATE TABLE devices (
        device_id    TEXT PRIMARY KEY,
        commune_code TEXT NOT NULL DEFAULT '',
        online       INTEGER NOT NULL,
        has_diag     INTEGER NOT NULL,
        diag_broken  INTEGER NOT NULL,
        diag_cause   TEXT,
        status       TEXT NOT NULL,
        cause        TEXT,
        status_since REAL,
        obs_ts       REAL,     -- key of the last observation folded
        obs_seq      INTEGER,
        last_ts      REAL,     -- newest event time of any message
        last_seq     INTEGER,
        last_seen    REAL,     -- newest receive time
        first_seen   REAL NOT NULL,
        report_ts    REAL,     -- event time of last_report
        last_report  BLOB
    );

    -- Raw messages (retention applies), doubling as the observations that
    -- history is re-derived from. Rows with seq < 0 are silences the collector
    -- derived itself (no wire message).
    CREATE TABLE messages (
        device_id   TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        ts          REAL NOT NULL,
        received_at REAL NOT NULL,
        obs_kind    TEXT,
        prompt      INTEGER NOT NULL DEFAULT 1,
        broken      INTEGER NOT NULL DEFAULT 0,
        cause       TEXT,
        rssi_dbm    REAL,
        rsrp_dbm    REAL,
        rsrq_db     REAL,
        sinr_db     REAL,
        csq         INTEGER,
        payload     BLOB,
        PRIMARY KEY (device_id, seq)
    );
    CREATE INDEX messages_device_ts ON messages(device_id, ts);
    CREATE INDEX messages_received ON messages(received_at);

    CREATE TABLE transitions (
        device_id    TEXT NOT NULL,
        ts           REAL NOT NULL,
        seq          INTEGER NOT NULL,
        online       INTEGER NOT NULL,
        has_diag     INTEGER NOT NULL,
        diag_broken  INTEGER NOT NULL,
        diag_cause   TEXT,
        status       TEXT NOT NULL,
        cause        TEXT,
        status_since REAL,
        PRIMARY KEY (device_id, ts, seq)
    ) WITHOUT ROWID;
    CREATE INDEX transitions_ts ON transitions(ts);

    CREATE TABLE events (
        device_id  TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        ts         REAL NOT NULL,
        type       TEXT NOT NULL,
        fault_code TEXT,
        action     TEXT,
        detail     TEXT,
        PRIMARY KEY (device_id, seq)
    );
    CREATE INDEX events_ts ON events(ts);

    CREATE TABLE faults (
        id         INTEGER PRIMARY KEY,
        device_id  TEXT NOT NULL,
        code       TEXT NOT NULL,
        severity   TEXT NOT NULL,
        cause      TEXT NOT NULL,
        since      REAL NOT NULL,
        cleared_at REAL,
        evidence   TEXT NOT NULL DEFAULT ''
    );
    CREATE UNIQUE INDEX faults_active ON faults(device_id, code) WHERE cleared_at IS NULL;
    CREATE INDEX faults_device ON faults(device_id, since);

    CREATE TABLE tickets (
        id               INTEGER PRIMARY KEY,
        device_id        TEXT NOT NULL,
        commune_code     TEXT NOT NULL,
        state            TEXT NOT NULL,
        cause            TEXT,
        opened_at        REAL NOT NULL,
        opened_by        TEXT NOT NULL,
        contractor       TEXT NOT NULL DEFAULT '',
        technician       TEXT NOT NULL DEFAULT '',
        started_at       REAL,
        closed_at        REAL,
        last_progress_at REAL NOT NULL,
        note             TEXT NOT NULL DEFAULT ''
    );
    -- At most one active ticket per device, whichever instance opens it.
    CREATE UNIQUE INDEX tickets_one_active ON tickets(device_id)
        WHERE state IN ('open', 'in_repair');
    CREATE INDEX tickets_window ON tickets(started_at, closed_at);

    CREATE TABLE ticket_history (
        id        INTEGER PRIMARY KEY,
        ticket_id INTEGER NOT NULL REFERENCES tickets(id),
        at        REAL NOT NULL,
        actor     TEXT NOT NULL,
        action    TEXT NOT NULL,
        note      TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX ticket_history_ticket ON ticket_history(ticket_id, at);

    CREATE TABLE users (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        role          TEXT NOT NULL,
        communes      TEXT NOT NULL DEFAULT '[]',
        password_hash TEXT NOT NULL,
        disabled      INTEGER NOT NULL DEFAULT 0,
        created_at    REAL NOT NULL
    );

    -- Tokens and sessions are stored as SHA-256 of the secret, never the secret.
    CREATE TABLE api_tokens (
        token_hash TEXT PRIMARY KEY,
        user_id    INTEGER NOT NULL REFERENCES users(id),
        label      TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );

    CREATE TABLE sessions (
        session_hash TEXT PRIMARY KEY,
        user_id      INTEGER NOT NULL REFERENCES users(id),
        csrf_token   TEXT NOT NULL,
        expires_at   REAL NOT NULL
    );

    CREATE TABLE audit_log (
        id     INTEGER PRIMARY KEY,
        at     REAL NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 2: login throttle counts, shared by every collector instance on this database.
    """
    CREATE TABLE login_throttle (
        key      TEXT PRIMARY KEY,   -- "pair:ADDR|NAME", "name:NAME" or "addr:ADDR"
        name     TEXT,               -- the user name the key is about (unlock)
        attempts INTEGER NOT NULL,
        next_at  REAL NOT NULL,      -- no attempt before this moment
        last_at  REAL NOT NULL       -- last counted attempt
    );
    CREATE INDEX login_throttle_name ON login_throttle(name);
    CREATE INDEX login_throttle_last ON login_throttle(last_at);
    """,
    # 3: when each cluster was first listed in the inventory (it counts from then,
    # or from its install date or first report). Rows already listed take the
    # first inventory import the audit log remembers.
    """
    ALTER TABLE inventory ADD COLUMN listed_at REAL;
    UPDATE inventory SET listed_at =
        (SELECT min(at) FROM audit_log WHERE action = 'inventory.upsert');
    """,
    # 4: alerts -- rules, group state, notifications and their delivery outbox,
    # recipients' channels, the monthly report's runs and its sending log.
    """
    CREATE TABLE alert_rules (
        name       TEXT PRIMARY KEY,
        data       TEXT NOT NULL,          -- the rule as JSON (collector.alerts.rules)
        updated_at REAL NOT NULL,
        updated_by TEXT NOT NULL
    );

    -- What was last notified per (rule, group): collector.alerts.evaluate.GroupState.
    CREATE TABLE alert_groups (
        rule          TEXT NOT NULL,
        grp           TEXT NOT NULL,
        members       TEXT NOT NULL DEFAULT '{}',
        pending_since REAL,
        last_sent_at  REAL,
        seq           INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (rule, grp)
    ) WITHOUT ROWID;

    CREATE TABLE notifications (
        id         INTEGER PRIMARY KEY,
        key        TEXT NOT NULL UNIQUE,
        rule       TEXT NOT NULL,
        grp        TEXT NOT NULL,
        kind       TEXT NOT NULL,
        critical   INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        data       TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX notifications_created ON notifications(created_at);

    -- The outbox: one row per (notification, recipient, channel). A worker claims
    -- due rows (state 'sending' with a lease), and a lease that expires is taken
    -- again, so a dead instance's claims are retried. 'sent' rows are final.
    CREATE TABLE deliveries (
        id              INTEGER PRIMARY KEY,
        notification_id INTEGER NOT NULL REFERENCES notifications(id),
        recipient       TEXT NOT NULL,
        channel         TEXT NOT NULL,
        address         TEXT NOT NULL,
        idem_key        TEXT NOT NULL UNIQUE,
        lang            TEXT NOT NULL DEFAULT 'vi',
        subject         TEXT NOT NULL,
        body            TEXT NOT NULL,
        payload         TEXT NOT NULL DEFAULT '{}',
        attachment      BLOB,
        attachment_name TEXT NOT NULL DEFAULT '',
        state           TEXT NOT NULL DEFAULT 'pending',
        attempts        INTEGER NOT NULL DEFAULT 0,
        not_before      REAL NOT NULL,
        lease_until     REAL,
        claimed_by      TEXT,
        last_error      TEXT NOT NULL DEFAULT '',
        created_at      REAL NOT NULL,
        sent_at         REAL,
        UNIQUE (notification_id, recipient, channel)
    );
    CREATE INDEX deliveries_due ON deliveries(state, not_before);

    -- Recipients' own settings (key "user:<name>") and contractors' contacts
    -- (key "contractor:<name>", the name as tickets and the inventory write it).
    CREATE TABLE alert_contacts (
        key            TEXT PRIMARY KEY,
        email          TEXT NOT NULL DEFAULT '',
        telegram       TEXT NOT NULL DEFAULT '',
        zalo           TEXT NOT NULL DEFAULT '',
        webhook_url    TEXT NOT NULL DEFAULT '',
        webhook_secret TEXT NOT NULL DEFAULT '',
        communes       TEXT NOT NULL DEFAULT '[]',
        quiet_start    TEXT NOT NULL DEFAULT '',
        quiet_end      TEXT NOT NULL DEFAULT '',
        lang           TEXT NOT NULL DEFAULT '',
        updated_at     REAL NOT NULL
    );

    -- One row per scheduled monthly report: whoever inserts it sends it.
    CREATE TABLE report_runs (
        period     TEXT PRIMARY KEY,
        claimed_by TEXT NOT NULL,
        claimed_at REAL NOT NULL
    );

    CREATE TABLE report_log (
        id               INTEGER PRIMARY KEY,
        at               REAL NOT NULL,
        period           TEXT NOT NULL,
        as_of            TEXT NOT NULL,
        trigger          TEXT NOT NULL,
        actor            TEXT NOT NULL,
        notification_key TEXT NOT NULL,
        recipients       TEXT NOT NULL DEFAULT '[]',
        summary          TEXT NOT NULL DEFAULT ''
    );
    """,
    # 5: end-to-end delivery and clock truth (issue 11): a content digest per
    # message (replays with other content), the clock's provenance per message,
    # and each boot's learned wall-clock offset.
    """
    ALTER TABLE messages ADD COLUMN digest BLOB;
    ALTER TABLE messages ADD COLUMN boot_id TEXT;
    ALTER TABLE messages ADD COLUMN mono REAL;
    -- 1 while ts is the receive time standing in for an unknown true time.
    ALTER TABLE messages ADD COLUMN time_estimated INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX messages_estimated ON messages(device_id, boot_id) WHERE time_estimated = 1;

    -- wall clock = mono + offset for every message of that boot.
    CREATE TABLE boot_clocks (
        device_id  TEXT NOT NULL,
        boot_id    TEXT NOT NULL,
        offset     REAL NOT NULL,
        learned_at REAL NOT NULL,
        PRIMARY KEY (device_id, boot_id)
    ) WITHOUT ROWID;
    """,
    # 6: remote commands from the district (collector.remote): what was sent to
    # which device by whom, until when it may run, and the device's reply.
    """
    CREATE TABLE remote_commands (
        id         TEXT PRIMARY KEY,
        device_id  TEXT NOT NULL,
        action     TEXT NOT NULL,
        args       TEXT NOT NULL DEFAULT '{}',
        actor      TEXT NOT NULL,
        mode       TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        state      TEXT NOT NULL,
        replied_at REAL,
        ok         INTEGER,
        result     TEXT,
        error      TEXT
    );
    CREATE INDEX remote_commands_device ON remote_commands(device_id, created_at);
    """,
    # 7: on-site findings on repair tickets, and a snapshot of every B2 produced (issue 14).
    """
    CREATE TABLE findings (
        id        INTEGER PRIMARY KEY,
        ticket_id INTEGER NOT NULL REFERENCES tickets(id),
        device_id TEXT NOT NULL,
        cause     TEXT NOT NULL,
        text      TEXT NOT NULL DEFAULT '',
        at        REAL NOT NULL,
        actor     TEXT NOT NULL
    );
    CREATE INDEX findings_device ON findings(device_id, at);

    CREATE TABLE b2_snapshots (
        id          INTEGER PRIMARY KEY,
        as_of       REAL NOT NULL,
        scope       TEXT NOT NULL,
        produced_at REAL NOT NULL,
        body        TEXT NOT NULL
    );
    CREATE INDEX b2_snapshots_key ON b2_snapshots(as_of, scope, produced_at);
    """,
    # 8: which report opened and which cleared each fault episode, so re-dating
    # that report (clock truth, issue 11) moves the episode's since / cleared_at too.
    """
    ALTER TABLE faults ADD COLUMN opened_seq INTEGER;
    ALTER TABLE faults ADD COLUMN cleared_seq INTEGER;
    """,
    # 9: what brought each status change (report, online, offline presence, or the
    # collector's silence rule), shown in the cluster's history (issue 19: a broker
    # node that dies with its connections publishes no last will).
    """
    ALTER TABLE transitions ADD COLUMN via TEXT;
    """,
    # 10: periodic work (offline sweep, retention, repairs sweep) done once across
    # collector instances on one database: each round is a lease on a row (issue 20).
    """
    CREATE TABLE periodic_claims (
        name        TEXT PRIMARY KEY,
        holder      TEXT NOT NULL,
        lease_until REAL NOT NULL
    );
    """,
    # 11: the fleet's counts kept as it changes (issue 20): per cluster what the
    # summaries count (fleet_members), the counts per commune and for the whole
    # fleet ('*') (fleet_tally), and a version per commune that every change a
    # page shows bumps (fleet_versions: the dashboards' live poll).
    """
    CREATE TABLE fleet_members (
        device_id      TEXT PRIMARY KEY,
        commune        TEXT NOT NULL,
        status         TEXT NOT NULL,
        cause          TEXT NOT NULL,    -- '' while working
        in_repair      INTEGER NOT NULL,
        online         INTEGER NOT NULL,
        never_reported INTEGER NOT NULL,
        since          REAL
    );
    CREATE INDEX fleet_members_commune ON fleet_members(commune);
    CREATE TABLE fleet_tally (
        commune        TEXT NOT NULL,    -- '*': the whole fleet
        status         TEXT NOT NULL,
        cause          TEXT NOT NULL,
        in_repair      INTEGER NOT NULL,
        online         INTEGER NOT NULL,
        never_reported INTEGER NOT NULL,
        n              INTEGER NOT NULL,
        PRIMARY KEY (commune, status, cause, in_repair, online, never_reported)
    );
    CREATE TABLE fleet_versions (
        commune TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    );
    INSERT INTO fleet_members (device_id, commune, status, cause, in_repair, online,
                               never_reported, since)
    SELECT ids.device_id,
           coalesce(i.commune_code, d.commune_code, ''),
           coalesce(d.status, 'broken'),
           CASE WHEN d.device_id IS NULL THEN 'unknown'
                WHEN d.status = 'broken' THEN coalesce(d.cause, 'unknown') ELSE '' END,
           CASE WHEN coalesce(d.status, 'broken') = 'broken' AND EXISTS (
                SELECT 1 FROM tickets t WHERE t.device_id = ids.device_id
                AND t.state = 'in_repair') THEN 1 ELSE 0 END,
           coalesce(d.online, 0),
           CASE WHEN d.device_id IS NULL THEN 1 ELSE 0 END,
           d.status_since
    FROM (SELECT device_id FROM inventory UNION SELECT device_id FROM devices) AS ids
         LEFT JOIN inventory i ON i.device_id = ids.device_id
         LEFT JOIN devices d ON d.device_id = ids.device_id;
    INSERT INTO fleet_tally (commune, status, cause, in_repair, online, never_reported, n)
    SELECT commune, status, cause, in_repair, online, never_reported, count(*)
    FROM fleet_members GROUP BY commune, status, cause, in_repair, online, never_reported;
    INSERT INTO fleet_tally (commune, status, cause, in_repair, online, never_reported, n)
    SELECT '*', status, cause, in_repair, online, never_reported, count(*)
    FROM fleet_members GROUP BY status, cause, in_repair, online, never_reported;
    """,
    # 12: working and broken clusters per commune at past moments (the overview's
    # month ends), computed once from the history; a write of history at or before
    # a moment, or an inventory change, drops the moments it affects.
    """
    CREATE TABLE counts_as_of (
        as_of   REAL NOT NULL,
        commune TEXT NOT NULL,      -- '*': the whole fleet (and: computed)
        working INTEGER NOT NULL,
        broken  INTEGER NOT NULL,
        PRIMARY KEY (as_of, commune)
    );
    """,
    # 13: the monthly evaluation's sums kept per cluster (availability_seconds):
    # from the month's start up to kept_until, the seconds the cluster counted and
    # those it was working, its status at kept_until and when it counts from; the
    # evaluation goes on from there over the transitions after kept_until. A write
    # of history at or before kept_until, or an inventory change, drops the rows.
    """
    CREATE TABLE availability_kept (
        month_start  REAL NOT NULL,
        device_id    TEXT NOT NULL,
        kept_until   REAL NOT NULL,
        seconds      REAL NOT NULL,
        working      REAL NOT NULL,
        status       TEXT,          -- at kept_until (NULL: no transition yet)
        counted_from REAL,          -- NULL: counts at every moment
        PRIMARY KEY (month_start, device_id)
    );
    CREATE INDEX availability_kept_until ON availability_kept(kept_until);
    """,
    # 14: heartbeats that changed nothing compacted after [db] raw_detail_hours
    # (collector.compaction): a kept run start's run_until, the dropped seqs as
    # ranges for the exactly-once dedupe, and per device where the next pass
    # starts (device_id '*': the receive time the last pass reached).
    """
    ALTER TABLE messages ADD COLUMN run_until REAL;
    CREATE TABLE seq_spans (
        device_id      TEXT NOT NULL,
        lo             INTEGER NOT NULL,
        hi             INTEGER NOT NULL,
        received_until REAL NOT NULL,   -- newest receive time in it (retention)
        PRIMARY KEY (device_id, lo)
    ) WITHOUT ROWID;
    CREATE TABLE compaction_marks (
        device_id TEXT NOT NULL PRIMARY KEY,
        ts        REAL NOT NULL,
        seq       INTEGER NOT NULL,
        span_hi   INTEGER              -- highest seq in seq_spans (NULL: none)
    ) WITHOUT ROWID;
    """,
    # 15: each device's serving cell as its newest full report names it (and that
    # report's time), kept at ingest, so a cluster's correlation neighbours (its
    # commune, its cell) are found without reading every cluster's last report.
    # Filled for existing devices by migrate() (_fill_cells).
    """
    ALTER TABLE devices ADD COLUMN cell TEXT;
    ALTER TABLE devices ADD COLUMN cell_ts REAL;
    CREATE INDEX devices_cell ON devices(cell);
    """,
)

LATEST = len(MIGRATIONS)
