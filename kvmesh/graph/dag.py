"""Choosing edges that keep a graph acyclic: the rule behind sampled designs, thresholded ones and summaries.

Spatial edges must form a DAG. Visiting candidate pairs in some order and skipping any that would close a
cycle gives a DAG whatever the order; the order (random when sampling, by falling probability or share when
thresholding or summarising) decides which of two conflicting edges wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def _reaches(adjacency: list[set[int]], start: int, goal: int) -> bool:
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        for nxt in adjacency[node] - seen:
            seen.add(nxt)
            stack.append(nxt)
    return False


def dag_choices(
    pairs: Sequence[tuple[int, int]],
    order: Sequence[int],
    decide: Callable[[int], bool],
    allowed: Sequence[bool] | None = None,
) -> tuple[list[bool], list[bool]]:
    """Visit `pairs` in `order`; an allowed edge that keeps the graph acyclic is a choice, `decide(e)` says
    whether to take it. Returns (chosen, considered), one flag per pair."""
    n = 1 + max((max(p) for p in pairs), default=0)
    adjacency: list[set[int]] = [set() for _ in range(n)]
    chosen, considered = [False] * len(pairs), [False] * len(pairs)
    for e in order:
        if allowed is not None and not allowed[e]:
            continue
        i, j = pairs[e]
        if _reaches(adjacency, j, i):  # i -> j would close a cycle
            continue
        considered[e] = True
        if decide(e):
            chosen[e] = True
            adjacency[i].add(j)
    return chosen, considered
