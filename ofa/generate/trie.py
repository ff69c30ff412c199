"""Prefix tree of candidate token sequences, with tensor tables for batched lookups.

``Trie(eos)`` keeps the official interface (``insert(tokens)``, ``get_next_layer(prefix)``: the
children of the node a prefix reaches, ``[eos]`` when the walk falls off the tree, ``[]`` at a
leaf). ``compile()`` turns it into sorted edge tables so that a whole beam batch advances and builds
its allowed-token masks with a handful of tensor ops:

- ``step(nodes [N], tokens [N]) -> nodes [N]``: follow an edge (``-1`` when none exists);
- ``allowed_mask(nodes [N], vocab) -> bool [N, V]``: children of each node; node ``-1`` allows
  only ``eos`` (the official "fell off the trie" rule).

Candidate answers are inserted as ``[bos] + bpe(" " + answer) + [eos]`` (architecture.md 8).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor

_KEY_STRIDE = 1 << 31  # edge key = parent * stride + token; tokens are < 2**31


class Trie:
    def __init__(self, eos: int):
        self.eos = eos
        self._children: List[Dict[int, int]] = [{}]  # node id -> {token: child id}; node 0 is the root
        self._tables: Dict[torch.device, "CompiledTrie"] = {}
        self.num_sequences = 0  # distinct complete sequences (paths ending with an eos edge)

    def insert(self, tokens: Iterable[int]) -> None:
        node = 0
        for tok in tokens:
            tok = int(tok)
            nxt = self._children[node].get(tok)
            if nxt is None:
                nxt = len(self._children)
                self._children[node][tok] = nxt
                self._children.append({})
                self.num_sequences += tok == self.eos
            node = nxt
        self._tables.clear()

    def get_next_layer(self, prefix: Sequence[int]) -> List[int]:
        node = 0
        for tok in prefix:
            node = self._children[node].get(int(tok))
            if node is None:
                return [self.eos]
        return list(self._children[node].keys())

    def __len__(self) -> int:
        return len(self._children)

    def compile(self, device: Optional[torch.device] = None) -> "CompiledTrie":
        device = torch.device(device or "cpu")
        if device not in self._tables:
            self._tables[device] = CompiledTrie(self._children, self.eos, device)
        return self._tables[device]


class CompiledTrie:
    """Edge tables of a ``Trie``: ``keys`` sorted ascending, edges grouped by parent (CSR)."""

    def __init__(self, children: List[Dict[int, int]], eos: int, device: torch.device):
        parents, tokens, kids = [], [], []
        for parent, edges in enumerate(children):
            for tok, child in edges.items():
                parents.append(parent)
                tokens.append(tok)
                kids.append(child)
        parent_t = torch.tensor(parents, dtype=torch.long)
        token_t = torch.tensor(tokens, dtype=torch.long)
        keys = parent_t * _KEY_STRIDE + token_t
        order = torch.argsort(keys)
        self.eos = eos
        self.keys = keys[order].to(device)
        self.edge_token = token_t[order].to(device)
        self.edge_child = torch.tensor(kids, dtype=torch.long)[order].to(device)
        counts = torch.bincount(parent_t, minlength=len(children)) if parents else torch.zeros(len(children), dtype=torch.long)
        self.row_count = counts.to(device)
        self.row_start = (torch.cumsum(counts, 0) - counts).to(device)
        self.root = 0

    def step(self, nodes: Tensor, tokens: Tensor) -> Tensor:
        """Child of each ``(node, token)``; ``-1`` where there is none or ``node`` is ``-1``."""
        if self.keys.numel() == 0:
            return torch.full_like(nodes, -1)
        key = nodes.clamp(min=0) * _KEY_STRIDE + tokens
        pos = torch.searchsorted(self.keys, key).clamp(max=self.keys.numel() - 1)
        found = self.keys[pos].eq(key) & nodes.ge(0)
        return torch.where(found, self.edge_child[pos], torch.full_like(nodes, -1))

    def walk(self, sequences: Tensor, start: Optional[Tensor] = None) -> Tensor:
        """Node reached by each row of ``sequences [N, L]`` from the root (or from ``start``)."""
        nodes = start if start is not None else torch.zeros(sequences.size(0), dtype=torch.long, device=sequences.device)
        for j in range(sequences.size(1)):
            nodes = self.step(nodes, sequences[:, j])
        return nodes

    def allowed_mask(self, nodes: Tensor, vocab_size: int) -> Tensor:
        """Bool ``[N, V]``: the children of each node; node ``-1`` allows only ``eos``."""
        n = nodes.numel()
        mask = torch.zeros(n, vocab_size, dtype=torch.bool, device=nodes.device)
        live = nodes.ge(0)
        counts = torch.where(live, self.row_count[nodes.clamp(min=0)], torch.zeros_like(nodes))
        total = int(counts.sum())
        if total:
            rows = torch.repeat_interleave(torch.arange(n, device=nodes.device), counts)
            starts = torch.repeat_interleave(self.row_start[nodes.clamp(min=0)], counts)
            offsets = torch.arange(total, device=nodes.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            mask[rows, self.edge_token[starts + offsets]] = True
        mask[~live, self.eos] = True
        return mask
