"""Generation: beam search / sampling with vectorised constraints (trie, token ranges, n-grams)."""
from .constraints import NGramBlocker, TokenRange, TrieConstraint
from .search import BeamSearch, Sampling
from .sequence_generator import SequenceGenerator
from .trie import CompiledTrie, Trie

__all__ = ["SequenceGenerator", "Trie", "CompiledTrie", "TokenRange", "TrieConstraint", "NGramBlocker",
           "BeamSearch", "Sampling"]
