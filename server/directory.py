"""Who is who when the grid already knows it: partition id <-> node id by arithmetic, no per-client storage."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence


class OffsetIds(Mapping[int, int]):
    """key -> key + offset for keys in [start, start + count): a read-only mapping of any size
    that holds three integers, iterates in ascending order and answers `in` in O(1)."""

    def __init__(self, start: int, count: int, offset: int) -> None:
        self.start, self.count, self.offset = start, count, offset

    def __getitem__(self, key: int) -> int:
        if not isinstance(key, int) or not self.start <= key < self.start + self.count:
            raise KeyError(key)
        return key + self.offset

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.start <= key < self.start + self.count

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys_in_order())

    def __len__(self) -> int:
        return self.count

    def keys_in_order(self) -> range:
        return range(self.start, self.start + self.count)


def known_partitions(first_node: int, count: int) -> tuple[OffsetIds, OffsetIds]:
    """(partition -> node, node -> partition) of a grid whose node `first_node + p` holds partition p."""
    return OffsetIds(0, count, first_node), OffsetIds(first_node, count, -first_node)


def sorted_keys(mapping: Mapping[int, int]) -> Sequence[int]:
    """The mapping's keys in ascending order: a range (O(1)) for OffsetIds, else sorted."""
    return mapping.keys_in_order() if isinstance(mapping, OffsetIds) else sorted(mapping)
