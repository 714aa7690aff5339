"""Versioned schema of the SQLite store.

``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``; the version
in place is SQLite's ``PRAGMA user_version``. Migrations only ever append: a
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
    # 2: remote commands from the district (collector.remote): what was sent to
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
)

LATEST = len(MIGRATIONS)
