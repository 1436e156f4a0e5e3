"""The chunk reader's read-ahead asks for neighbouring records of a pack as one range."""
from ckptfs.store.index import Location
from ckptfs.store.reader import merged_ranges


def test_read_ahead_ranges_merge_neighbouring_records():
    locations = [Location(2, 100, 50, 0), Location(1, 500, 10, 0), Location(1, 16, 100, 0),
                 Location(1, 116, 200, 0), Location(1, 5000, 10, 0), Location(2, 150, 10, 0),
                 Location(1, 20, 30, 0)]
    assert merged_ranges(locations, gap=1000) == [(1, 16, 494), (1, 5000, 10), (2, 100, 60)]
    assert merged_ranges(locations, gap=0) == [(1, 16, 300), (1, 500, 10), (1, 5000, 10),
                                               (2, 100, 60)]
    assert merged_ranges([]) == []
