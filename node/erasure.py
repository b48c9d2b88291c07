"""Erasure at a sender's request (UK GDPR Arts 17 and 19): a withdrawal whose ground asks
it has every version of the summary this node received from that sender erased, in the
transaction that stores the withdrawal, so the signed receipt the sender gets for it says
the erasure is done. A version that arrives after such a withdrawal (sent earlier, held up)
is erased as it is stored. So are the sender's answers to the clarifications this node asked
about them, whenever they come.

Erased is content gone: the signed body, the link tokens and the chronology entries. The
inbox row stays, as the replay defence (a message id is remembered until retention deletes
the row, as for every message) and so an erased item can say what became of it."""

from __future__ import annotations

from collections.abc import Sequence

from linkage.v1 import envelope_pb2
from node.store import FetchOne, Tx

WITHDRAWAL = envelope_pb2.MESSAGE_KIND_WITHDRAWAL
ANSWER = envelope_pb2.MESSAGE_KIND_CLARIFICATION_RESPONSE  # written into the SQL, as its partial index is


async def erase_versions(tx: Tx, sender: str, summary_id: str, withdrawal_id: str) -> list[str]:
    """Erase what this node holds of every version of the summary the sender made before
    its withdrawal: the message ids erased now."""
    rows = await (
        await tx.execute(
            "SELECT seq, message_id FROM inbox INDEXED BY inbox_live_by_summary "
            "WHERE sender = ? AND summary_id = ? AND state != 'erased' AND message_id < ? AND kind != ? ORDER BY seq",
            (sender, summary_id, withdrawal_id, WITHDRAWAL),
        )
    ).fetchall()
    await erase_rows(tx, [seq for seq, _ in rows])
    return [message_id for _, message_id in rows]


async def erase_answers(tx: Tx, sender: str, about: Sequence[str]) -> list[str]:
    """Erase the sender's answers to the clarifications this node asked about these items
    (what they said is about the same person, and goes with them): the message ids erased."""
    if not about:
        return []
    marks = ",".join("?" * len(about))
    rows = await (
        await tx.execute(
            "SELECT seq, message_id FROM inbox INDEXED BY inbox_clarification_answers "
            f"WHERE kind = {ANSWER} AND in_reply_to IN (SELECT message_id FROM clarifications_asked "
            f"WHERE about_message_id IN ({marks})) AND sender = ? AND state != 'erased' ORDER BY seq",
            (*about, sender),
        )
    ).fetchall()
    await erase_rows(tx, [seq for seq, _ in rows])
    return [message_id for _, message_id in rows]


async def answers_erased_item(fetchone: FetchOne, question_id: str) -> bool:
    """Whether an answer arriving now replies to a clarification about an item since erased."""
    row = await fetchone(
        "SELECT 1 FROM clarifications_asked q JOIN inbox i ON i.message_id = q.about_message_id "
        "WHERE q.message_id = ? AND i.state = 'erased'",
        (question_id,),
    )
    return row is not None


async def erase_rows(tx: Tx, seqs: Sequence[int]) -> None:
    if not seqs:
        return
    tx.store.erasures += 1  # as it is written: a transaction after this one sees it (node/chronology.py)
    marks = ",".join("?" * len(seqs))
    await tx.execute(f"UPDATE inbox SET state = 'erased' WHERE seq IN ({marks})", seqs)
    for table, key in (("chronology", "inbox_seq"), ("inbox_tokens", "inbox_seq"), ("inbox_bodies", "seq")):
        await tx.execute(f"DELETE FROM {table} WHERE {key} IN ({marks})", seqs)


async def erasing_withdrawal(fetchone: FetchOne, sender: str, summary_id: str, message_id: str) -> tuple[str, str]:
    """The message id and ground of a withdrawal of this summary the sender made after
    `message_id` that asks erasure, or empty strings if there is none. (Withdrawals of one
    summary are few: all of them in one row.)"""
    row = await fetchone(
        "SELECT group_concat(hex(b.signed)) FROM inbox i INDEXED BY inbox_withdrawals "
        "JOIN inbox_bodies b ON b.seq = i.seq WHERE i.sender = ? AND i.summary_id = ? AND i.message_id > ? "
        f"AND i.kind = {WITHDRAWAL}",
        (sender, summary_id, message_id),
    )
    for signed in (row[0] or "").split(","):
        if not signed:
            continue
        body = envelope_pb2.MessageBody.FromString(envelope_pb2.SignedMessage.FromString(bytes.fromhex(signed)).body)
        if body.withdrawal.erase:
            return body.message_id, body.withdrawal.ground
    return "", ""


async def erased_note(fetchone: FetchOne, message_id: str) -> str | None:
    """Why a received item can no longer be read, if it was erased at its sender's request."""
    row = await fetchone(
        "SELECT sender, summary_id FROM inbox WHERE message_id = ? AND state = 'erased'", (message_id,)
    )
    if row is None:
        return None
    withdrawal_id, ground = await erasing_withdrawal(fetchone, row[0], row[1], message_id)
    # An answer erased with what it answered names no summary, so no withdrawal is found for it.
    which = f" ({ground}; withdrawal {withdrawal_id})" if withdrawal_id else ""
    return (
        f"item {message_id!r} was erased at its sender's request{which}: this node no longer holds it, "
        "and neither should your case system"
    )
