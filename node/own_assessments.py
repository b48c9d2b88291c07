"""Where one of this node's own assessments stands: current; superseded by a later version
of its summary; or withdrawn, its summary withdrawn since on a ground that retracts the
assessment itself (`retracts` in the code lists: not to be relied on, about the wrong
person), not only its sharing (sent in error, say, where the assessment still stands). The
chronology marks each own entry so, and only a current one falls due for review."""

from __future__ import annotations

from linkage.codelists import CodeLists


def state_of(codes: CodeLists) -> tuple[str, tuple[str, ...]]:
    """An SQL expression for the state of assessment `a` ('current', 'superseded' or
    'withdrawn', as a received summary's), and its parameters. "Since" is by id: ids ascend
    as this node makes them, however its clock is set."""
    retracting = tuple(
        g for g in codes.codes("withdrawal_ground") if codes.entry("withdrawal_ground", g).get("retracts")
    )
    sql = (
        "CASE WHEN EXISTS (SELECT 1 FROM withdrawals w INDEXED BY withdrawals_by_summary "
        f"WHERE w.summary_id = a.summary_id AND w.ground IN ({','.join('?' * len(retracting))}) "
        "AND w.share_id > a.assessment_id LIMIT 1) THEN 'withdrawn' "
        "WHEN EXISTS (SELECT 1 FROM assessments b INDEXED BY assessments_by_summary "
        "WHERE b.summary_id = a.summary_id AND b.version > a.version LIMIT 1) THEN 'superseded' ELSE 'current' END"
    )
    return sql, retracting
