"""Generation: beam search / sampling with vectorised constraints (trie, token ranges, n-grams)."""
from ofa.generate.constraints import NGramBlocker, TokenRange, TrieConstraint
from ofa.generate.search import BeamSearch, Sampling
from ofa.generate.sequence_generator import SequenceGenerator
from ofa.generate.trie import CompiledTrie, Trie

__all__ = ["SequenceGenerator", "Trie", "CompiledTrie", "TokenRange", "TrieConstraint", "NGramBlocker",
           "BeamSearch", "Sampling"]
