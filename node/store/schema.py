"""Versioned schema migrations. Append a migration; never edit a shipped one."""

from __future__ import annotations

# Migration 32's trigger frames a chronology entry as protobuf does, in SQL: these are part
# of a shipped migration, so they never change. The state field (13) of each state, as
# the node frames it (node/inbox.py), and its length:
_STATE_FIELD = (
    "CASE {state} WHEN 'superseded' THEN x'6a0a73757065727365646564' "
    "WHEN 'withdrawn' THEN x'6a0977697468647261776e' ELSE x'6a0763757272656e74' END"
)
_STATE_FIELD_LENGTH = "CASE state WHEN 'superseded' THEN 12 WHEN 'withdrawn' THEN 11 ELSE 9 END"
# The length of an entry's own header (tag and length varint) from its framed length:
# entries are far shorter than 2 MiB (a message is at most 256 KiB), so at most 4 bytes.
_HEADER_LENGTH = "CASE WHEN length(framed) <= 129 THEN 2 WHEN length(framed) <= 16386 THEN 3 ELSE 4 END"
# A varint's continuation bytes (0x80 | the low seven bits), found by position: SQLite has
# no function from a number to a byte.
_CONTINUATION = (
    "CAST(x'808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f' "
    "|| x'a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf' "
    "|| x'c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf' "
    "|| x'e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff' AS BLOB)"
)
_LENGTH_VARINT = (
    "CASE WHEN length(framed) < 128 THEN char(length(framed)) "
    f"WHEN length(framed) < 16384 THEN substr({_CONTINUATION}, (length(framed) & 127) + 1, 1) "
    "|| char(length(framed) >> 7) "
    f"ELSE substr({_CONTINUATION}, (length(framed) & 127) + 1, 1) "
    f"|| substr({_CONTINUATION}, ((length(framed) >> 7) & 127) + 1, 1) || char(length(framed) >> 14) END"
)

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
    # 2: casework beyond summaries: message kinds and threads, read receipts, withdrawal
    # and supersession, involvement notices, closure intents and their replies.
    """
    ALTER TABLE inbox ADD COLUMN state TEXT NOT NULL DEFAULT 'new';
    ALTER TABLE inbox ADD COLUMN summary_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE inbox ADD COLUMN in_reply_to TEXT NOT NULL DEFAULT '';
    CREATE INDEX inbox_by_summary ON inbox(sender, summary_id);
    CREATE INDEX inbox_by_message ON inbox(message_id);
    -- The outbox now carries every kind of message, not only shares: rebuilt
    -- without the foreign key to shares, plus kind, summary and read columns.
    CREATE TABLE outbox_v2(
      message_id TEXT PRIMARY KEY,
      share_id TEXT NOT NULL,
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
      reason TEXT NOT NULL DEFAULT '',
      kind INTEGER NOT NULL DEFAULT 1,
      summary_id TEXT NOT NULL DEFAULT '',
      read_at_ms INTEGER,
      read_by_role TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO outbox_v2(message_id, share_id, recipient, envelope, digest, state, attempts, next_attempt_at_ms,
                          created_at_ms, sent_at_ms, delivered_at_ms, receipt, reason)
      SELECT message_id, share_id, recipient, envelope, digest, state, attempts, next_attempt_at_ms,
             created_at_ms, sent_at_ms, delivered_at_ms, receipt, reason FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v2 RENAME TO outbox;
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at_ms);
    CREATE INDEX outbox_by_share ON outbox(share_id);
    CREATE INDEX outbox_by_summary ON outbox(summary_id);
    ALTER TABLE shares ADD COLUMN kind INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE involvement(
      token BLOB NOT NULL,
      node_id TEXT NOT NULL,
      joined INTEGER NOT NULL,
      at_ms INTEGER NOT NULL,
      PRIMARY KEY (token, node_id)
    ) WITHOUT ROWID;
    CREATE TABLE closures(
      closure_id TEXT PRIMARY KEY,
      case_id TEXT NOT NULL REFERENCES cases(case_id),
      proposed_at_ms INTEGER NOT NULL,
      respond_by TEXT NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('proposed', 'closed')),
      intent BLOB NOT NULL,
      closed_at_ms INTEGER
    );
    CREATE TABLE closure_invitees(
      closure_id TEXT NOT NULL REFERENCES closures(closure_id),
      node_id TEXT NOT NULL,
      answer INTEGER NOT NULL DEFAULT 0,
      reason TEXT NOT NULL DEFAULT '',
      at_ms INTEGER,
      PRIMARY KEY (closure_id, node_id)
    ) WITHOUT ROWID;
    """,
    # 3: the audit log's Merkle frontier (RFC 9162 compact range), kept with each
    # commit so checkpoints need no rescan; retention bookkeeping.
    """
    CREATE TABLE audit_head(
      id INTEGER PRIMARY KEY CHECK (id = 1),
      seq INTEGER NOT NULL,
      frontier BLOB NOT NULL
    );
    """,
    # 4: a newer version of a summary supersedes the live ones in one index probe,
    # without reading each earlier row (its state sits after the signed envelope).
    """
    CREATE INDEX inbox_live_by_summary ON inbox(sender, summary_id, state);
    """,
    # 5: chronology entries derived once per received summary (the serialised entry
    # without its state), so a family's chronology is read, not recomputed. The state
    # follows the inbox row by trigger; retention's deletes cascade. Item -1 marks a
    # summary with no risk items as derived.
    """
    CREATE TABLE chronology(
      inbox_seq INTEGER NOT NULL REFERENCES inbox(seq) ON DELETE CASCADE,
      item INTEGER NOT NULL,
      at_ms INTEGER NOT NULL,
      source_node TEXT NOT NULL,
      summary_id TEXT NOT NULL,
      state TEXT NOT NULL,
      entry BLOB NOT NULL,
      PRIMARY KEY (inbox_seq, item)
    ) WITHOUT ROWID;
    CREATE TRIGGER chronology_follows_inbox_state AFTER UPDATE OF state ON inbox
      BEGIN UPDATE chronology SET state = NEW.state WHERE inbox_seq = NEW.seq; END;
    """,
    # 6: inbox_live_by_summary (sender, summary_id, state) serves every look-up by sender
    # and summary, so the shorter index was one more B-tree written for each message received.
    """
    DROP INDEX inbox_by_summary;
    """,
    # 7: look-ups that read every row, now found by index (figures from 200,000 rows):
    # - an inbox item's tokens by its row (the key leads with the token): opening an item,
    #   answering about it, auditing the case system's feed;
    # - a case's own assessments, for its chronology (38 ms, now 0.02), and its closures;
    # - the outbox's live rows with what the due scan filters and orders them by, so a
    #   backlog is read from the index instead of sorted with its envelopes (158 ms per
    #   batch of 256 with 100,000 due, now 11). It replaces outbox_due: as many B-trees.
    # - what retention purges: received rows by age, and the delivered messages whose
    #   bodies are still kept (a daily purge read every row while holding the writer).
    """
    CREATE INDEX inbox_tokens_by_seq ON inbox_tokens(inbox_seq);
    CREATE INDEX assessments_by_case ON assessments(case_id, recorded_at_ms);
    CREATE INDEX closures_by_case ON closures(case_id, proposed_at_ms);
    DROP INDEX outbox_due;
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at_ms, created_at_ms, message_id, recipient);
    CREATE INDEX inbox_by_age ON inbox(received_at_ms);
    CREATE INDEX outbox_bodies_kept ON outbox(created_at_ms)
      WHERE state IN ('delivered', 'undeliverable') AND length(envelope) > 0;
    """,
    # 8: the audit log's compact range at the size the gateway witnessed last: the next
    # consistency proof is built from it and the entries since, not from the whole log.
    """
    CREATE TABLE witnessed(
      id INTEGER PRIMARY KEY CHECK (id = 1),
      frontier BLOB NOT NULL
    );
    """,
    # 9: the latest checkpoint the witness cosigned (SignedCheckpoint, Cosignature): what an IG
    # officer's verify checks the log against without asking the gateway.
    """
    ALTER TABLE witnessed ADD COLUMN checkpoint BLOB;
    ALTER TABLE witnessed ADD COLUMN cosignature BLOB;
    """,
    # 10: outbox_due holds live messages only (queued or sent), the only ones its queries ask
    # for: a delivered message leaves it instead of moving to a part no query reads (a page
    # fewer written per delivery), and it stays the size of what is in flight.
    """
    DROP INDEX outbox_due;
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at_ms, created_at_ms, message_id, recipient)
      WHERE state IN ('queued', 'sent');
    """,
    # 11: the outbox's envelope in a table of its own (outbox_bodies, by the row's seq). A
    # row's state sat after its 4 KB envelope, in an overflow page, and a change of state
    # changes the row's size, so SQLite freed and rewrote that page (zeroed first, under
    # secure_delete) twice per message: the costliest statements a sender ran. A body is
    # written with its row and deleted only by retention, which clears body_kept with it.
    """
    CREATE TABLE outbox_v3(
      seq INTEGER PRIMARY KEY,
      message_id TEXT NOT NULL UNIQUE,
      share_id TEXT NOT NULL,
      recipient TEXT NOT NULL,
      digest BLOB NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'undeliverable')),
      attempts INTEGER NOT NULL DEFAULT 0,
      next_attempt_at_ms INTEGER NOT NULL,
      created_at_ms INTEGER NOT NULL,
      sent_at_ms INTEGER,
      delivered_at_ms INTEGER,
      receipt BLOB,
      reason TEXT NOT NULL DEFAULT '',
      kind INTEGER NOT NULL DEFAULT 1,
      summary_id TEXT NOT NULL DEFAULT '',
      read_at_ms INTEGER,
      read_by_role TEXT NOT NULL DEFAULT '',
      body_kept INTEGER NOT NULL DEFAULT 1
    );
    INSERT INTO outbox_v3(seq, message_id, share_id, recipient, digest, state, attempts, next_attempt_at_ms,
                          created_at_ms, sent_at_ms, delivered_at_ms, receipt, reason, kind, summary_id,
                          read_at_ms, read_by_role, body_kept)
      SELECT rowid, message_id, share_id, recipient, digest, state, attempts, next_attempt_at_ms,
             created_at_ms, sent_at_ms, delivered_at_ms, receipt, reason, kind, summary_id,
             read_at_ms, read_by_role, length(envelope) > 0 FROM outbox ORDER BY rowid;
    CREATE TABLE outbox_bodies(
      seq INTEGER PRIMARY KEY,
      envelope BLOB NOT NULL
    );
    INSERT INTO outbox_bodies(seq, envelope)
      SELECT rowid, envelope FROM outbox WHERE length(envelope) > 0 ORDER BY rowid;
    DROP TABLE outbox;
    ALTER TABLE outbox_v3 RENAME TO outbox;
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at_ms, created_at_ms, message_id, recipient)
      WHERE state IN ('queued', 'sent');
    CREATE INDEX outbox_by_share ON outbox(share_id);
    CREATE INDEX outbox_by_summary ON outbox(summary_id);
    CREATE INDEX outbox_bodies_kept ON outbox(created_at_ms)
      WHERE state IN ('delivered', 'undeliverable') AND body_kept;
    """,
    # 12: a received message's signed bytes in a table of their own, for the reason of 11: its
    # state (superseded, read, withdrawn) sat after them, in an overflow page that each change
    # of state freed and rewrote. They go with their row (retention's deletes cascade).
    """
    CREATE TABLE inbox_bodies(
      seq INTEGER PRIMARY KEY REFERENCES inbox(seq) ON DELETE CASCADE,
      signed BLOB NOT NULL
    );
    INSERT INTO inbox_bodies(seq, signed) SELECT seq, signed FROM inbox ORDER BY seq;
    ALTER TABLE inbox DROP COLUMN signed;
    """,
    # 13: an open case is found by its case system's reference, so that opening it again (a
    # case system retrying after a lost answer) is refused instead of making a second case.
    """
    CREATE INDEX cases_open_by_ref ON cases(case_ref) WHERE status = 'open';
    """,
    # 14: a share's request id, chosen by the case system, and the answer it was given, so a
    # repeated call (after a lost answer) is answered again instead of sharing twice.
    """
    ALTER TABLE shares ADD COLUMN request_id TEXT;
    ALTER TABLE shares ADD COLUMN response BLOB;
    CREATE UNIQUE INDEX shares_by_request ON shares(request_id) WHERE request_id IS NOT NULL;
    """,
    # 15: a proposed closure's note, kept to alert in the same words an agency that becomes
    # involved with the family after the proposal.
    """
    ALTER TABLE closures ADD COLUMN note TEXT NOT NULL DEFAULT '';
    """,
    # 16: an assessment's summary id and version beside its body, so that the next version
    # of a summary is numbered from the last one recorded (inside the write, so two at once
    # are numbered apart). Assessments recorded before this number from 1 again.
    """
    ALTER TABLE assessments ADD COLUMN summary_id TEXT;
    ALTER TABLE assessments ADD COLUMN version INTEGER;
    CREATE INDEX assessments_by_summary ON assessments(summary_id, version);
    """,
    # 17: information requests followed to their answers (domain.md §6 rule 7: every request
    # ends in a decision). This node's requests, each agency asked and its newest answer; and,
    # on a request this node received, how it answered. Requests sent before this are not listed.
    # Retention purges a request (its purpose is content) with the received summaries.
    """
    CREATE TABLE info_requests(
      request_id TEXT PRIMARY KEY,
      case_id TEXT NOT NULL,
      sent_at_ms INTEGER NOT NULL,
      needed_by TEXT NOT NULL,
      purpose TEXT NOT NULL
    );
    CREATE INDEX info_requests_by_case ON info_requests(case_id, sent_at_ms);
    CREATE INDEX info_requests_by_age ON info_requests(sent_at_ms);
    CREATE TABLE info_requests_asked(
      message_id TEXT PRIMARY KEY,
      request_id TEXT NOT NULL REFERENCES info_requests(request_id),
      node_id TEXT NOT NULL,
      answer INTEGER NOT NULL DEFAULT 0,
      answered_at_ms INTEGER,
      answer_message_id TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX info_requests_asked_by_request ON info_requests_asked(request_id);
    ALTER TABLE inbox ADD COLUMN answer INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbox ADD COLUMN answered_at_ms INTEGER;
    """,
    # 18: involvement notices were also kept per token and agency, and nothing read them: who
    # is linked to a family is the gateway's answer (discovery), and each notice is audited.
    """
    DROP TABLE involvement;
    """,
    # 19: chronology entries carry the handling conditions of the summary they come from;
    # those derived before are derived again, from the inbox, at the next chronology call.
    """
    DELETE FROM chronology;
    """,
    # 20: professional challenges this node raised, each to its answer (their words are in
    # sealed bodies, so kept here to list); on one it received, its answer's words beside the
    # inbox row's answer. Retention purges a challenge with the received summaries.
    """
    CREATE TABLE challenges(
      message_id TEXT PRIMARY KEY,
      case_id TEXT NOT NULL,
      node_id TEXT NOT NULL,
      sent_at_ms INTEGER NOT NULL,
      stage TEXT NOT NULL,
      subject TEXT NOT NULL,
      about_message_id TEXT NOT NULL,
      concern TEXT NOT NULL,
      outcome_sought TEXT NOT NULL,
      respond_by TEXT NOT NULL,
      escalates_message_id TEXT NOT NULL,
      answer INTEGER NOT NULL DEFAULT 0,
      answered_at_ms INTEGER,
      response TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX challenges_by_case ON challenges(case_id, sent_at_ms);
    CREATE INDEX challenges_by_age ON challenges(sent_at_ms);
    CREATE INDEX challenges_by_escalated ON challenges(escalates_message_id);
    ALTER TABLE inbox ADD COLUMN answer_note TEXT;
    """,
    # 21: the duty view's look-ups, of what is not answered, received and sent. Partial
    # indexes: answered rows, most of them, are not in them. (The received kinds are closure
    # intents, information requests and challenges, written as numbers as the query writes
    # them: SQLite uses a partial index only where the query's terms match its own.)
    """
    CREATE INDEX inbox_awaiting_answer ON inbox(kind) WHERE answer = 0 AND kind IN (7, 12, 15);
    CREATE INDEX info_requests_unanswered ON info_requests_asked(answer) WHERE answer = 0;
    CREATE INDEX challenges_unanswered ON challenges(answer) WHERE answer = 0;
    """,
    # 22: cases found by the case system's reference, open or closed, newest (highest id) first.
    """
    DROP INDEX cases_open_by_ref;
    CREATE INDEX cases_by_ref ON cases(case_ref, case_id);
    """,
    # 23: the day each assessment of current risk is to be reviewed by, for the duty view
    # (domain.md §6 rule 12: an overdue review is flagged to its author). Assessments recorded
    # before this have none, and are not listed.
    """
    ALTER TABLE assessments ADD COLUMN review_date TEXT;
    CREATE INDEX assessments_by_review ON assessments(review_date) WHERE review_date IS NOT NULL;
    """,
    # 24: a message that could not be delivered is followed up another way, and the duty
    # view lists those that are not yet (the partial index holds only them; read
    # notifications, kind 14, nobody need be told of).
    """
    ALTER TABLE outbox ADD COLUMN follow_up TEXT;
    ALTER TABLE outbox ADD COLUMN followed_up_at_ms INTEGER;
    CREATE INDEX outbox_to_follow_up ON outbox(state, created_at_ms)
      WHERE state = 'undeliverable' AND followed_up_at_ms IS NULL AND kind != 14;
    """,
    # 25: how the agency knows each person's identifier is theirs (identity_basis code);
    # people linked before this have none recorded.
    """
    ALTER TABLE case_people ADD COLUMN identity_basis TEXT NOT NULL DEFAULT '';
    """,
    # 26: chronology entries carry their item's subject access exemptions; those derived
    # before are derived again, from the inbox, at the next chronology call (as at 19).
    """
    DELETE FROM chronology;
    """,
    # 27: withdrawals may ask each recipient to erase a summary (node/erasure.py). Every
    # version that arrives looks for a later withdrawal of its summary that did: one probe
    # of the few withdrawals (kind 5, written as the query writes it), not of every version.
    # The sender's record of its withdrawals, each with its ground, lets one that asks
    # erasure follow one that did not.
    """
    CREATE INDEX inbox_withdrawals ON inbox(sender, summary_id, message_id) WHERE kind = 5;
    CREATE TABLE withdrawals(
      share_id TEXT PRIMARY KEY,
      summary_id TEXT NOT NULL,
      ground TEXT NOT NULL,
      erase INTEGER NOT NULL,
      at_ms INTEGER NOT NULL
    );
    CREATE INDEX withdrawals_by_summary ON withdrawals(summary_id, erase);
    """,
    # 28: chronology entries name who in them was linked on a basis not verified; those
    # derived before are derived again, from the inbox, at the next chronology call (as at 19).
    """
    DELETE FROM chronology;
    """,
    # 29: the day each received summary of current risk is to be reviewed by, for the duty
    # view (domain.md §6 rule 12: an overdue review is flagged to its recipients too). The
    # partial index holds the live ones only, written as the query writes them. Summaries
    # received before this have none, and are not listed.
    """
    ALTER TABLE inbox ADD COLUMN review_date TEXT;
    CREATE INDEX inbox_reviews ON inbox(review_date) WHERE review_date IS NOT NULL AND state IN ('new', 'read');
    """,
    # 30: the clarifications this node asked, each with the item it asked about, so that the
    # sender's answers go with that item when its sender has it erased (node/erasure.py);
    # answers are found by the question they reply to (kind 11, as the query writes it).
    # Questions asked before this are not recorded, and their answers are kept.
    """
    CREATE TABLE clarifications_asked(
      message_id TEXT PRIMARY KEY,
      about_message_id TEXT NOT NULL
    );
    CREATE INDEX clarifications_asked_by_about ON clarifications_asked(about_message_id);
    CREATE INDEX inbox_clarification_answers ON inbox(in_reply_to) WHERE kind = 11;
    """,
    # 31: a message may be cancelled: a version of a summary not yet forwarded when the
    # summary is withdrawn is not sent (node/withholding.py). SQLite cannot change a CHECK in
    # place, so the outbox is rebuilt as at 11, its rows and seqs as they were; a cancelled
    # message is final, so retention purges its body as it does a delivered one's.
    """
    CREATE TABLE outbox_v4(
      seq INTEGER PRIMARY KEY,
      message_id TEXT NOT NULL UNIQUE,
      share_id TEXT NOT NULL,
      recipient TEXT NOT NULL,
      digest BLOB NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'undeliverable', 'cancelled')),
      attempts INTEGER NOT NULL DEFAULT 0,
      next_attempt_at_ms INTEGER NOT NULL,
      created_at_ms INTEGER NOT NULL,
      sent_at_ms INTEGER,
      delivered_at_ms INTEGER,
      receipt BLOB,
      reason TEXT NOT NULL DEFAULT '',
      kind INTEGER NOT NULL DEFAULT 1,
      summary_id TEXT NOT NULL DEFAULT '',
      read_at_ms INTEGER,
      read_by_role TEXT NOT NULL DEFAULT '',
      body_kept INTEGER NOT NULL DEFAULT 1,
      follow_up TEXT,
      followed_up_at_ms INTEGER
    );
    INSERT INTO outbox_v4 SELECT seq, message_id, share_id, recipient, digest, state, attempts, next_attempt_at_ms,
      created_at_ms, sent_at_ms, delivered_at_ms, receipt, reason, kind, summary_id, read_at_ms, read_by_role,
      body_kept, follow_up, followed_up_at_ms FROM outbox ORDER BY seq;
    DROP TABLE outbox;
    ALTER TABLE outbox_v4 RENAME TO outbox;
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at_ms, created_at_ms, message_id, recipient)
      WHERE state IN ('queued', 'sent');
    CREATE INDEX outbox_by_share ON outbox(share_id);
    CREATE INDEX outbox_by_summary ON outbox(summary_id);
    CREATE INDEX outbox_bodies_kept ON outbox(created_at_ms)
      WHERE state IN ('delivered', 'undeliverable', 'cancelled') AND body_kept;
    CREATE INDEX outbox_to_follow_up ON outbox(state, created_at_ms)
      WHERE state = 'undeliverable' AND followed_up_at_ms IS NULL AND kind != 14;
    """,
    # 32: chronology entries are stored framed as the chronology's answer carries them (tag,
    # length, the entry with its state), so a family's chronology is read from SQLite as one
    # value, not assembled here from a row per entry (for 10,000 entries, about 10 ms
    # against 20). When a summary's state changes, the trigger takes the old state field off
    # its entries, puts the new one on and frames them again (item -1 rows carry nothing to
    # frame). Entries derived before are derived again at the next chronology call (as at 19).
    f"""
    DROP TRIGGER chronology_follows_inbox_state;
    DROP TABLE chronology;
    CREATE TABLE chronology(
      inbox_seq INTEGER NOT NULL REFERENCES inbox(seq) ON DELETE CASCADE,
      item INTEGER NOT NULL,
      at_ms INTEGER NOT NULL,
      source_node TEXT NOT NULL,
      summary_id TEXT NOT NULL,
      state TEXT NOT NULL,
      framed BLOB NOT NULL,
      PRIMARY KEY (inbox_seq, item)
    ) WITHOUT ROWID;
    CREATE TRIGGER chronology_follows_inbox_state AFTER UPDATE OF state ON inbox
      WHEN NEW.state IN ('new', 'read', 'superseded', 'withdrawn')
      BEGIN
        UPDATE chronology SET framed = CAST(
            substr(framed, {_HEADER_LENGTH} + 1, length(framed) - {_HEADER_LENGTH} - {_STATE_FIELD_LENGTH})
            || {_STATE_FIELD.format(state="NEW.state")} AS BLOB)
          WHERE inbox_seq = NEW.seq AND item >= 0 AND state <> NEW.state;
        UPDATE chronology SET state = NEW.state, framed = CAST(x'0a' || {_LENGTH_VARINT} || framed AS BLOB)
          WHERE inbox_seq = NEW.seq AND item >= 0 AND state <> NEW.state;
      END;
    """,
    # 33: a message this node sent after the copy its store was put back to, given back by the
    # agency it went to (node/returned_copies.py): the restore it was recovered after, and the
    # link tokens it went with, for a withdrawal to be addressed by (its envelope is not kept).
    """
    CREATE TABLE outbox_recovered(
      seq INTEGER PRIMARY KEY,
      restore_id TEXT NOT NULL,
      tokens BLOB NOT NULL
    );
    """,
    # 34: a received message's routing header, exactly as it came: what its sender needs, with
    # the signed copy, to seal it again should its own store be put back to before it
    # (node/returned_copies.py). Erased and purged with the body.
    """
    ALTER TABLE inbox_bodies ADD COLUMN routing BLOB NOT NULL DEFAULT x'';
    """,
    # 35: when a delivered message was queued again, for a recipient whose store was put back
    # (node/redelivery.py): its delivery time runs from then, not from when it was made.
    """
    ALTER TABLE outbox ADD COLUMN queued_again_at_ms INTEGER;
    """,
    # 36: the duty view's "not delivered after some hours" and the oldest-message gauge count a
    # message queued again from then too (35), and read it from outbox_due, which holds the
    # live rows only, as they read the time it was made.
    """
    DROP INDEX outbox_due;
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at_ms, created_at_ms, message_id, recipient,
      queued_again_at_ms) WHERE state IN ('queued', 'sent');
    """,
    # 37: link tokens whose subscription at the gateway is to end (a case closed, a person
    # removed), written with the change that ends it and deleted once the gateway has taken
    # it (node/cases.py): a node that stops before then ends it as it next connects.
    """
    CREATE TABLE subscriptions_to_end(token BLOB PRIMARY KEY) WITHOUT ROWID;
    """,
    # 38: the answer a call that sends a message (a question, a request, a challenge, or an
    # answer to one) was given, under the request_id its case system chose, to answer a
    # repeat of the call as the first was (node/repeats.py). Purged by retention.
    """
    CREATE TABLE call_answers(
      request_id TEXT PRIMARY KEY,
      request_sha256 BLOB NOT NULL,
      answered_at_ms INTEGER NOT NULL,
      response BLOB NOT NULL
    );
    CREATE INDEX call_answers_by_age ON call_answers(answered_at_ms);
    """,
    # 39: the message that carried each answer to a challenge or a closure this node made, as
    # information requests' answers have kept theirs: the answer made last holds, and the ids
    # of one agency's messages, unlike their times, ascend in the order it made them however
    # its clock was set (linkage/ids.py). An answer recorded before this is taken as older
    # than any that comes after it.
    """
    ALTER TABLE challenges ADD COLUMN answer_message_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE closure_invitees ADD COLUMN answer_message_id TEXT NOT NULL DEFAULT '';
    """,
    # 40: each restore the log records, where its copy of the log ended and from which number
    # the delivery events after it are numbered (node/event_numbers.py), written with its
    # `store.restored` entry. Events were numbered as their entries until now: any number
    # past those starts a restore's run.
    """
    CREATE TABLE restores(
      log_entries INTEGER PRIMARY KEY,
      numbered_from INTEGER NOT NULL
    );
    INSERT OR REPLACE INTO restores
      SELECT json_extract(entry, '$.detail.log_entries'), ts_ms * 1000 FROM audit
      WHERE event = 'store.restored' ORDER BY seq;
    """,
    # 41: the shares made of each assessment, in the order they were made, for a case's list
    # of its own assessments (ListAssessments).
    """
    CREATE INDEX shares_by_assessment ON shares(assessment_id, share_id);
    """,
    # 42: involvement notices to send (node/involvement.py), written with the change they tell
    # of and deleted as each is queued: one a gateway away or a stop kept from going waits here.
    """
    CREATE TABLE notices_to_send(
      seq INTEGER PRIMARY KEY,
      joined INTEGER NOT NULL,
      tokens BLOB NOT NULL,
      actor BLOB NOT NULL
    );
    """,
    # 43: the identity-basis codes the chronology entries were derived under (a digest of the
    # list, node/chronology.py): an entry names who in it was linked on a basis the lists do
    # not count as verified, so entries derived under other lists are derived again as the
    # node starts. Empty until then: the entries derived before are derived again once.
    """
    CREATE TABLE chronology_basis(identity_bases TEXT NOT NULL);
    """,
    # 44: on a request, challenge or closure proposal this node received, the message id of its
    # newest answer (node/answers.py): an answer a withdrawal kept from leaving takes the
    # request back to be answered (node/withdrawals.py). Empty for those answered before this.
    """
    ALTER TABLE inbox ADD COLUMN answered_by TEXT NOT NULL DEFAULT '';
    CREATE INDEX inbox_answered_by ON inbox(answered_by) WHERE answered_by != '';
    """,
    # 45: on a message delivered, the recipient's audit log size its receipt gave (node/outbox.py):
    # should the recipient's store be put back to a shorter log, the message is sent again,
    # however its clock was set since (node/redelivery.py). NULL for one receipted before this.
    """
    ALTER TABLE outbox ADD COLUMN receipt_log_size INTEGER;
    """,
    # 46: this node's replies given back after a restore (an answer, a read notification) to a
    # message its store does not hold yet: the agency sends that message again, and it may
    # come after the copies. Applied, and removed, as it comes (node/recovered_workflow.py).
    """
    CREATE TABLE replies_given_back(
      reply_id TEXT PRIMARY KEY,
      sender TEXT NOT NULL,
      replied_to TEXT NOT NULL,
      body BLOB NOT NULL
    );
    CREATE INDEX replies_given_back_to ON replies_given_back(sender, replied_to);
    """,
    # 47: the replies received (answers and read notifications: node/recovered_workflow.py's
    # REPLIES) by what they reply to: those that came, after a restore, before the copy of
    # the message they answer are found by it once it is put back, whenever the clock said
    # they came.
    """
    CREATE INDEX inbox_replies ON inbox(in_reply_to) WHERE kind IN (8, 13, 14, 16);
    """,
)
