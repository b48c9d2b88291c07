"""How a node keeps and protects what it holds, in the words a record of processing asks
for (UK GDPR Art. 30(1)(f) and (g): when data is erased, and the security measures): read
from its configuration, its directory and its store, so the register states what is so
rather than what was meant."""

from __future__ import annotations

import json
import sqlite3

from linkage.backup import PQ_RECIPIENT
from linkage.cli.audit_entries import cosigned_held
from linkage.clock import utc_minute
from linkage.config import NodeConfig
from linkage.directory import DirectoryView
from linkage.v1 import audit_pb2, directory_pb2

SEALED = {
    directory_pb2.HPKE_SUITE_X25519_SHA256_AES128GCM: "HPKE with X25519 and AES-128-GCM; signed with Ed25519",
    directory_pb2.HPKE_SUITE_MLKEM768X25519_SHA256_AES256GCM: (
        "HPKE with ML-KEM-768 and X25519 (post-quantum) and AES-256-GCM; signed with Ed25519 and ML-DSA-65"
    ),
}


def protection(config: NodeConfig, directory: DirectoryView, db: sqlite3.Connection) -> dict[str, str]:
    """Heading -> what holds for it now."""
    kept = "received summaries, the bodies of summaries sent and the requests sent are "
    if config.retention_days:
        kept += f"kept {config.retention_days} days, then purged ([retention] summaries_days)"
    else:
        kept += "kept until withdrawn or erased ([retention] summaries_days is 0)"
    sealed = SEALED.get(directory.directory.suite, f"suite {directory.directory.suite}")
    return {
        "kept": f"{kept}; the audit log in full",
        "in transit": (
            "mutual TLS 1.3 between members, with certificates from the federation CA; each message sealed "
            f"end to end for its recipient alone ({sealed})"
        ),
        "audit log": _audit_log(db),
        "backups": _backups(db),
    }


def _audit_log(db: sqlite3.Connection) -> str:
    (entries,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()
    said = f"{entries} entries, each chained to the one before by SHA-256"
    if (held := cosigned_held(db)) is None:
        return f"{said}; no checkpoint of it cosigned by the gateway's witness is kept yet"
    signed, cosignature = held
    size = audit_pb2.Checkpoint.FromString(signed.checkpoint).tree_size
    return (
        f"{said}; the latest checkpoint the gateway's witness cosigned covers {size} of them, at "
        f"{utc_minute(cosignature.at_ms)} (`linkage audit verify` checks the log against it)"
    )


def _backups(db: sqlite3.Connection) -> str:
    row = db.execute("SELECT entry FROM audit WHERE event = 'store.backed_up' ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return "none recorded (`linkage backup create` takes one, encrypted)"
    record = json.loads(row[0])["detail"]
    recipients = record["recipients"]
    kind = "post-quantum" if all(r.startswith(PQ_RECIPIENT) for r in recipients) else "classic"
    return (
        f"the latest taken {utc_minute(record['taken_at_ms'])}, of {record['log_entries']} audit entries, "
        f"encrypted with age to {len(recipients)} {kind} key(s)"
    )
