"""The RFC 9162 verifier agrees with all 196 transparency-dev/merkle vectors, and the
proofs this code builds verify (and stop verifying when anything is changed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkage.merkle import (
    CompactRange,
    ProofError,
    consistency_proof,
    consistency_proof_from,
    inclusion_proof,
    leaf_hash,
    root_and_proofs,
    root_from_inclusion,
    root_of,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "data" / "merkle"
FILES = sorted(VECTORS.rglob("*.json"))


def _b(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _proof(value: list[str] | None) -> list[bytes]:
    return [_b(p) for p in value or []]


def _check(case: dict[str, Any], kind: str) -> bool:
    try:
        if kind == "inclusion":
            verify_inclusion(
                case["leafIdx"], case["treeSize"], _b(case["leafHash"]), _proof(case["proof"]), _b(case["root"])
            )
        else:
            verify_consistency(
                case["size1"], case["size2"], _b(case["root1"]), _b(case["root2"]), _proof(case["proof"])
            )
    except ProofError:
        return False
    return True


def test_there_are_196_vectors() -> None:
    assert len(FILES) == 196


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(VECTORS)))
def test_verifier_agrees_with_the_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    kind = path.relative_to(VECTORS).parts[0]
    assert _check(case, kind) is not case["wantErr"], case["desc"]


leaves_st = st.lists(st.binary(max_size=8), min_size=1, max_size=40).map(lambda xs: [leaf_hash(x) for x in xs])


@settings(max_examples=200, deadline=None)
@given(leaves=leaves_st, data=st.data())
def test_built_proofs_verify_and_any_flip_breaks_them(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    root = root_of(leaves)
    index = data.draw(st.integers(0, n - 1))
    proof = inclusion_proof(index, leaves)
    verify_inclusion(index, n, leaves[index], proof, root)
    assert root_and_proofs(leaves) == (root, [inclusion_proof(i, leaves) for i in range(n)])
    assert root_from_inclusion(index, n, leaves[index], proof) == root
    m = data.draw(st.integers(1, n))
    old = root_of(leaves[:m])
    cproof = consistency_proof(m, leaves)
    verify_consistency(m, n, old, root, cproof)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:i], bytes([proof[i][0] ^ 1]) + proof[i][1:], *proof[i + 1 :]]
        with pytest.raises(ProofError):
            verify_inclusion(index, n, leaves[index], bad, root)
    with pytest.raises(ProofError):
        verify_inclusion(index, n, leaves[index], proof, bytes([root[0] ^ 1]) + root[1:])
    if m < n:
        with pytest.raises(ProofError):
            verify_consistency(m, n, bytes([old[0] ^ 1]) + old[1:], root, cproof)


def test_compact_range_round_trips_and_matches_the_recursive_root() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(37)]
    compact = CompactRange()
    for i, leaf in enumerate(leaves, start=1):
        compact.append(leaf)
        assert compact.root() == root_of(leaves[:i])
    assert CompactRange.from_bytes(compact.to_bytes()).root() == compact.root()


@settings(max_examples=300, deadline=None)
@given(sizes=st.tuples(st.integers(1, 300), st.integers(0, 300)))
def test_a_proof_built_from_a_compact_range_is_the_proof_built_from_every_leaf(sizes: tuple[int, int]) -> None:
    """What a node sends the witness: it holds the compact range at the size last witnessed and
    the leaves since, not the whole log; the proof must be exactly RFC 9162's."""
    m, grown = sizes
    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(m + grown)]
    old = CompactRange()
    for leaf in leaves[:m]:
        old.append(leaf)
    proof = consistency_proof_from(old, leaves[m:])
    assert proof == consistency_proof(m, leaves)
    verify_consistency(m, len(leaves), old.root(), root_of(leaves), proof)


def test_no_proof_is_built_from_the_empty_tree() -> None:
    with pytest.raises(ValueError, match="empty tree"):
        consistency_proof_from(CompactRange(), [leaf_hash(b"a")])


def test_a_proof_asked_of_a_position_outside_the_tree_is_refused_not_made_up() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(4)]
    for index in (-1, 4):
        with pytest.raises(ValueError, match="index outside the tree"):
            inclusion_proof(index, leaves)
    for m in (0, 5):
        with pytest.raises(ValueError, match="sizes outside the tree"):
            consistency_proof(m, leaves)
    with pytest.raises(ValueError, match="an empty tree has no inclusion proofs"):
        root_and_proofs([])
    grown = CompactRange()
    grown.append(leaves[0])
    with pytest.raises(ValueError, match="a subtree of 2 leaves cannot start at leaf 1"):
        grown.append_subtree(leaf_hash(b"pair"), 1)


@pytest.mark.parametrize("index", [4, 5])
def test_a_leaf_at_or_past_the_trees_size_is_in_no_proof(index: int) -> None:
    """A tree of 4 leaves has leaves 0 to 3: a proof for leaf 4 is refused before any hashing."""
    with pytest.raises(ProofError, match="beyond size 4"):
        root_from_inclusion(index, 4, bytes(32), [bytes(32), bytes(32)])
