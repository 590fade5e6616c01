"""Learning BPE merges from pre-token counts, updated incrementally (the training half of ``labkit.bpe``).

Each merge is the most frequent adjacent pair of ids in the corpus (ties: the smallest pair). After a merge only the
words that held the pair are rewritten and only their pair counts change, so training costs about the size of the
corpus plus the work of the merges, not a recount of the whole corpus per merge.

>>> _learn_merges({(97, 97, 97, 98, 100): 1, (97, 97, 97, 98, 97, 99): 1}, 3)
[(97, 97), (97, 98), (256, 257)]
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from itertools import pairwise

__all__ = ["_learn_merges", "_replace_pair"]


def _replace_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """``ids`` with every occurrence of ``pair``, scanned left to right, replaced by ``new_id``.

    >>> _replace_pair([97, 97, 97, 98], (97, 97), 256)
    [256, 97, 98]
    """
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _learn_merges(word_counts: dict[tuple[int, ...], int], n_merges: int) -> list[tuple[int, int]]:
    """Up to ``n_merges`` merges, each the most frequent adjacent pair (ties: the smallest pair of ids)."""
    words = [list(word) for word in word_counts]
    freqs = list(word_counts.values())
    counts: dict[tuple[int, int], int] = defaultdict(int)  # pair -> occurrences in the corpus
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> indices of the words that hold it
    for i, word in enumerate(words):
        for pair in pairwise(word):
            counts[pair] += freqs[i]
            where[pair].add(i)
    # A max-heap by (count, then smallest pair). Entries go stale when a count changes; a changed count pushes a
    # fresh entry, and a popped entry whose count is no longer current is skipped.
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while heap and len(merges) < n_merges:
        neg_count, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg_count:
            continue
        new_id = 256 + len(merges)
        merges.append(pair)
        touched: set[tuple[int, int]] = set()
        for i in where.pop(pair):  # the order of words and pushes cannot change the result: counts are sums
            touched |= _merge_in_word(words, freqs, i, pair, new_id, counts, where)
        for changed in touched:
            if counts.get(changed, 0) > 0:
                heapq.heappush(heap, (-counts[changed], changed))
    return merges


def _merge_in_word(
    words: list[list[int]], freqs: list[int], i: int, pair: tuple[int, int], new_id: int,
    counts: dict[tuple[int, int], int], where: dict[tuple[int, int], set[int]],
) -> set[tuple[int, int]]:
    """Merge ``pair`` in word ``i`` and update the pair counts and index; returns the pairs whose count changed."""
    old, new = words[i], _replace_pair(words[i], pair, new_id)
    words[i] = new
    delta = Counter(pairwise(new))
    delta.subtract(Counter(pairwise(old)))
    new_pairs = set(pairwise(new))
    changed = set()
    for p, d in delta.items():
        if d == 0:
            continue
        changed.add(p)
        counts[p] += d * freqs[i]
        if counts[p] == 0:
            del counts[p]
        if d > 0:
            where[p].add(i)
        elif p not in new_pairs and p != pair:
            where[p].discard(i)
    return changed
