"""RFC 9162 Merkle trees: leaf and node hashing, inclusion and consistency proofs.

Pure code: no I/O. Hashing is SHA-256 with domain separation (0x00 before a leaf, 0x01
before two child hashes), so a leaf can never be passed off as a node. The verifiers follow
RFC 9162 sections 2.1.3.2 and 2.1.4.2 step by step and raise `LogProofError`; they never
return a bool. `MerkleTree` is the server's side: it keeps every perfect subtree hash, so a
proof costs O(log n) stored hashes (plus O(log n) hashes for the ragged right edge).
`Frontier` is the client's side: the hashes of the perfect subtrees covering [0, n), enough
to append leaves and recompute the root without the tree. Vectors: tests/vectors/log/.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hsm_vault.errors import LogProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of leaf hashes, by the RFC's definition (O(n))."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


@dataclass(frozen=True)
class Frontier:
    """The perfect subtree hashes covering leaves [0, size), largest (leftmost) first."""

    size: int = 0
    hashes: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.hashes) != bin(self.size).count("1"):
            raise LogProofError("the compact tree does not fit its size")
        if any(len(h) != HASH_SIZE for h in self.hashes):
            raise LogProofError("a compact tree hash is not 32 bytes")

    def append(self, leaf: bytes) -> Frontier:
        """The frontier with one more leaf hash."""
        hashes = list(self.hashes)
        carry = leaf
        size = self.size
        while size & 1:  # merge equal-sized subtrees from the right, as binary addition
            carry = node_hash(hashes.pop(), carry)
            size >>= 1
        return Frontier(self.size + 1, (*hashes, carry))

    def extend(self, leaves: Iterable[bytes]) -> Frontier:
        frontier = self
        for leaf in leaves:
            frontier = frontier.append(leaf)
        return frontier

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        root = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            root = node_hash(left, root)
        return root


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 2.1.3.2: `leaf` is entry `index` of the tree of `size` with `root`."""
    if not 0 <= index < size:
        raise LogProofError(f"entry {index} is not in a log of {size} entries")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise LogProofError(f"the inclusion proof of entry {index} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise LogProofError(f"the inclusion proof of entry {index} does not verify")


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: the tree (size2, root2) extends the tree (size1, root1)."""
    if size1 > size2:
        raise LogProofError(f"a log of {size2} entries cannot extend one of {size1}")
    if size1 == size2:
        if proof or root1 != root2:
            raise LogProofError(f"two different logs of {size1} entries")
        return
    if size1 == 0:
        if proof:
            raise LogProofError("a consistency proof from the empty log must be empty")
        return
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, root1)
    if not path:
        raise LogProofError("the consistency proof is empty")
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise LogProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != root1 or sr != root2:
        raise LogProofError(
            f"the log of {size2} entries is not an extension of the log of {size1} entries"
        )


class MerkleTree:
    """An append-only tree of leaf hashes keeping every perfect subtree hash (server side)."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        #: levels[h][i] is the hash of leaves [i * 2**h, (i + 1) * 2**h).
        self.levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        self.levels[0].append(leaf)
        index, height = self.size - 1, 0
        while index & 1:
            if len(self.levels) == height + 1:
                self.levels.append([])
            level = self.levels[height]
            self.levels[height + 1].append(node_hash(level[index - 1], level[index]))
            index >>= 1
            height += 1

    def _hash(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end); perfect aligned ranges are looked up."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            return self.levels[n.bit_length() - 1][start // n]
        k = _split(n)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise LogProofError(f"the log has {self.size} entries, not {size}")

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check_size(size)
        return self._hash(0, size) if size else EMPTY_ROOT

    def frontier(self, size: int | None = None) -> Frontier:
        size = self.size if size is None else size
        self._check_size(size)
        hashes, start = [], 0
        for bit in reversed(range(size.bit_length())):
            if size >> bit & 1:
                hashes.append(self.levels[bit][start >> bit])
                start += 1 << bit
        return Frontier(size, tuple(hashes))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 PATH(index, D[size])."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise LogProofError(f"entry {index} is not in a log of {size} entries")
        proof: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                start += k
        return proof[::-1]

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """RFC 9162 PROOF(size1, D[size2]) (empty for size1 = 0 or size1 = size2)."""
        size2 = self.size if size2 is None else size2
        self._check_size(size2)
        if not 0 <= size1 <= size2:
            raise LogProofError(f"no consistency proof from {size1} to {size2} entries")
        if size1 in (0, size2):
            return []
        proof: list[bytes] = []
        start, end, m, whole = 0, size2, size1, True
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                start, m, whole = start + k, m - k, False
        if not whole:
            proof.append(self._hash(start, end))
        return proof[::-1]
