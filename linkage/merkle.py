"""RFC 9162 (Certificate Transparency v2) Merkle trees: hashing, incremental roots,
inclusion and consistency proofs, and their verification.

Verification follows transparency-dev/merkle (proof/verify.go) and agrees with its
196 test vectors (tests/data/merkle).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
# The most hashes in a consistency proof between trees of up to 2**64 leaves (one per level
# below the split, one per level above it): anything longer is malformed, not merely wrong.
MAX_CONSISTENCY_PROOF = 128


class ProofError(ValueError):
    """A proof that does not verify, and why."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


class CompactRange:
    """The roots of the perfect subtrees covering leaves [0, size): O(log n) state
    from which the tree root follows, updated in O(log n) per appended leaf."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash."""
        self.append_subtree(leaf, 0)

    def append_subtree(self, root: bytes, height: int) -> None:
        """Add the root of a perfect subtree of 2**height leaves, which must start where a
        subtree of that size may: at a multiple of its size."""
        if self.size & ((1 << height) - 1):
            raise ValueError(f"a subtree of {1 << height} leaves cannot start at leaf {self.size}")
        self.hashes.append(root)
        size = self.size >> height
        while size & 1:  # merge completed perfect subtrees
            right = self.hashes.pop()
            left = self.hashes.pop()
            self.hashes.append(node_hash(left, right))
            size >>= 1
        self.size += 1 << height

    def extend(self, following: CompactRange) -> None:
        """Add the leaves of `following`, a compact range of the leaves that come next, counted
        from 0: it must start at a multiple of the largest power of two not above its size."""
        for size, subtree in zip(_perfect_sizes(following.size), following.hashes, strict=True):
            self.append_subtree(subtree, size.bit_length() - 1)

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self.hashes)

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        result = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            result = node_hash(h, result)
        return result

    def to_bytes(self) -> bytes:
        return self.size.to_bytes(8, "big") + b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactRange:
        size = int.from_bytes(data[:8], "big")
        hashes = [data[i : i + HASH_SIZE] for i in range(8, len(data), HASH_SIZE)]
        if len(hashes) != bin(size).count("1"):
            raise ValueError("compact range does not match its size")
        return cls(size, hashes)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of leaf hashes, by the recursive definition (RFC 9162 §2.1.1)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def _split(n: int) -> int:
    """The largest power of two smaller than n."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (RFC 9162 §2.1.3.1)."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError("index outside the tree")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(index, leaves[:k]), root_of(leaves[k:])]
    return [*inclusion_proof(index - k, leaves[k:]), root_of(leaves[:k])]


def root_and_proofs(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root and every leaf's inclusion proof at once, in O(n log n) hashes
    (`inclusion_proof` for each leaf would rebuild the subtrees n times)."""
    n = len(leaves)
    if n == 0:
        raise ValueError("an empty tree has no inclusion proofs")
    if n == 1:
        return leaves[0], [[]]
    k = _split(n)
    left, left_proofs = root_and_proofs(leaves[:k])
    right, right_proofs = root_and_proofs(leaves[k:])
    for proof in left_proofs:
        proof.append(right)
    for proof in right_proofs:
        proof.append(left)
    return node_hash(left, right), left_proofs + right_proofs


def consistency_proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) (RFC 9162 §2.1.4.1)."""
    n = len(leaves)
    if not 0 < m <= n:
        raise ValueError("sizes outside the tree")
    return _subproof(m, 0, n, True, lambda lo, hi: root_of(leaves[lo:hi]))


def consistency_proof_from(old: CompactRange, appended: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) for the tree of m = old.size leaves grown by the `appended` leaf hashes,
    without the first m leaves: every subtree the proof takes from before m is one of the
    perfect subtrees a compact range keeps, and the rest lie wholly after m."""
    m, n = old.size, old.size + len(appended)
    if m == 0:
        raise ValueError("consistency with the empty tree proves nothing")
    held: dict[tuple[int, int], bytes] = {}
    start = 0
    for size, subtree in zip(_perfect_sizes(m), old.hashes, strict=True):
        held[(start, start + size)] = subtree
        start += size

    def subtree_hash(lo: int, hi: int) -> bytes:
        if lo >= m:
            return root_of(appended[lo - m : hi - m])
        return held[(lo, hi)]  # a KeyError would be a bug in the recursion, not bad input

    return _subproof(m, 0, n, True, subtree_hash)


def _perfect_sizes(size: int) -> list[int]:
    """The sizes of the perfect subtrees covering [0, size), largest first (a compact range's order)."""
    return [1 << b for b in reversed(range(size.bit_length())) if size >> b & 1]


def _subproof(m: int, lo: int, hi: int, complete: bool, subtree_hash: Callable[[int, int], bytes]) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], complete), with MTH of any leaf range from `subtree_hash`."""
    if m == hi - lo:
        return [] if complete else [subtree_hash(lo, hi)]
    k = _split(hi - lo)
    if m <= k:
        return [*_subproof(m, lo, lo + k, complete, subtree_hash), subtree_hash(lo + k, hi)]
    return [*_subproof(m - k, lo + k, hi, False, subtree_hash), subtree_hash(lo, lo + k)]


def _decomp(index: int, size: int) -> tuple[int, int]:
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = node_hash(seed, h) if (index >> i) & 1 == 0 else node_hash(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1 == 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = node_hash(h, seed)
    return seed


def _match(calculated: bytes, expected: bytes) -> None:
    if calculated != expected:
        raise ProofError("calculated root does not match the expected root")


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless `proof` shows leaf `index` is in the tree of `size` with `root`."""
    _match(root_from_inclusion(index, size, leaf, proof), root)


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` leads to from leaf `index` of a tree of `size`; ProofError if
    the proof cannot belong to such a tree. Whoever calls it must then trust that root."""
    if index >= size:
        raise ProofError(f"index {index} is beyond size {size}")
    if len(leaf) != HASH_SIZE:
        raise ProofError("leaf hash has the wrong size")
    inner, border = _decomp(index, size)
    if len(proof) != inner + border:
        raise ProofError(f"wrong proof size {len(proof)}, want {inner + border}")
    result = _chain_inner(leaf, proof[:inner], index)
    return _chain_border_right(result, proof[inner:])


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> None:
    """Raise ProofError unless the tree of `size2` extends the tree of `size1` (append-only)."""
    if size2 < size1:
        raise ProofError(f"size2 ({size2}) < size1 ({size1})")
    if size1 == 0:
        raise ProofError("consistency with the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError("equal sizes need an empty proof")
        _match(root1, root2)
        return
    if not proof:
        raise ProofError("empty proof")
    inner, border = _decomp(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    seed, start = proof[0], 1
    if size1 == 1 << shift:
        seed, start = root1, 0
    if len(proof) != start + inner + border:
        raise ProofError(f"wrong proof size {len(proof)}, want {start + inner + border}")
    rest = proof[start:]
    mask = (size1 - 1) >> shift
    hash1 = _chain_border_right(_chain_inner_right(seed, rest[:inner], mask), rest[inner:])
    _match(hash1, root1)
    hash2 = _chain_border_right(_chain_inner(seed, rest[:inner], mask), rest[inner:])
    _match(hash2, root2)
