"""Versioned schema migrations. Append a migration; never edit a shipped one."""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: cases, assessments, shares with their outbox, the inbox and the audit log.
    """
    CREATE TABLE cases(
      case_id TEXT PRIMARY KEY,
      case_ref TEXT NOT NULL,
      opened_at_ms INTEGER NOT NULL,
      status TEXT NOT NULL
    );
    CREATE TABLE case_people(
      case_id TEXT NOT NULL REFERENCES cases(case_id),
      token BLOB NOT NULL,
      role_in_risk TEXT NOT NULL,
      person_type TEXT NOT NULL,
      relationship TEXT NOT NULL,
      protect_identity INTEGER NOT NULL,
      PRIMARY KEY (case_id, token)
    ) WITHOUT ROWID;
    CREATE INDEX case_people_by_token ON case_people(token);
    CREATE TABLE assessments(
      assessment_id TEXT PRIMARY KEY,
      case_id TEXT NOT NULL REFERENCES cases(case_id),
      recorded_at_ms INTEGER NOT NULL,
      body BLOB NOT NULL
    );
    CREATE TABLE shares(
      share_id TEXT PRIMARY KEY,
      assessment_id TEXT NOT NULL,
      created_at_ms INTEGER NOT NULL,
      outcome TEXT NOT NULL,
      decision BLOB NOT NULL
    );
    CREATE TABLE outbox(
      message_id TEXT PRIMARY KEY,
      share_id TEXT NOT NULL REFERENCES shares(share_id),
      recipient TEXT NOT NULL,
      envelope BLOB NOT NULL,
      digest BLOB NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'undeliverable')),
      attempts INTEGER NOT NULL DEFAULT 0,
      next_attempt_at_ms INTEGER NOT NULL,
      created_at_ms INTEGER NOT NULL,
      sent_at_ms INTEGER,
      delivered_at_ms INTEGER,
      receipt BLOB,
      reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at_ms);
    CREATE TABLE inbox(
      seq INTEGER PRIMARY KEY AUTOINCREMENT,
      sender TEXT NOT NULL,
      message_id TEXT NOT NULL,
      digest BLOB NOT NULL,
      received_at_ms INTEGER NOT NULL,
      kind INTEGER NOT NULL,
      share_id TEXT NOT NULL,
      signed BLOB NOT NULL,
      UNIQUE (sender, message_id)
    );
    CREATE TABLE inbox_tokens(
      token BLOB NOT NULL,
      inbox_seq INTEGER NOT NULL REFERENCES inbox(seq),
      PRIMARY KEY (token, inbox_seq)
    ) WITHOUT ROWID;
    CREATE TABLE audit(
      seq INTEGER PRIMARY KEY,
      ts_ms INTEGER NOT NULL,
      event TEXT NOT NULL,
      counterpart TEXT NOT NULL,
      entry TEXT NOT NULL,
      hash BLOB NOT NULL
    );
    CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
      BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
      BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """,
)
