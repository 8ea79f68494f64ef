"""The one packed-bit codec behind every mask format."""

import numpy as np
import pytest

from fedlth.tickets.bits import pack, unpack


def test_pack_is_row_major_msb_first_with_zero_padding():
    keep = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1]], dtype=bool)  # 9 bits: 10110000 1(0000000)
    assert pack(keep).tolist() == [0b10110000, 0b10000000]
    assert unpack(pack(keep), 9, "m").reshape(3, 3).tolist() == keep.tolist()


@pytest.mark.parametrize(
    "bits,match",
    [
        (np.zeros(3, np.uint8), "has 3 bytes; 9 entries need 2"),
        (np.zeros(2, np.int8), "1-D uint8"),
        (np.zeros((1, 2), np.uint8), "1-D uint8"),
        (np.array([0, 0b01000000], np.uint8), "padding bits set past entry 9"),
    ],
)
def test_unpack_refuses_anything_but_the_exact_bytes(bits, match):
    with pytest.raises(ValueError, match=match):
        unpack(bits, 9, "m")


def test_empty_mask():
    assert pack(np.zeros(0, bool)).size == 0
    assert unpack(np.zeros(0, np.uint8), 0, "m").size == 0
