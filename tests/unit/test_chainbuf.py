"""The chain packet buffer (cext/chainbuf.pyx): layout, rings, and distrust of its contents."""

import os
import struct

import pytest

from cext import chainbuf as cb


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "qs-unit.chainbuf"
    yield str(p)
    if p.exists():
        p.unlink()


def test_create_open_and_geometry(path):
    b = cb.ChainBuffer.create(path, 100, 3, 2, "unit", mode=0o640)
    assert (b.n_slots, b.n_rings, b.n_nfs, b.name) == (100, 3, 2, "unit")
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert os.stat(path).st_size == cb.region_size(100, 3)
    assert b.slots_offset % 4096 == 0
    o = cb.ChainBuffer.open(path)
    assert (o.n_slots, o.n_rings) == (100, 3)
    assert o.ctl == cb.CTL_PARK and o.batch == 32
    b.ctl = cb.CTL_RUN
    b.batch = 64
    assert (o.ctl, o.batch) == (cb.CTL_RUN, 64)
    with pytest.raises(cb.ChainBufferError, match="path"):
        cb.ChainBuffer.create(path, 100, 3, 2)  # O_EXCL: never reuses a file


def test_ring_fifo_and_wraparound(path):
    b = cb.ChainBuffer.create(path, 4, 2, 2)  # ring capacity 4
    offs = [i * cb.SLOT_SIZE for i in range(4)]
    for _ in range(5):  # wrap the indices several times
        assert b.enqueue(1, offs) == 4
        assert b.enqueue(1, [0]) == 0  # full
        assert b.ring_count(1) == 4
        assert b.dequeue(1, 10) == offs
    assert b.dequeue(1, 1) == []


def test_slot_data_round_trip(path):
    b = cb.ChainBuffer.create(path, 8, 1, 1)
    b.write_slot(3 * cb.SLOT_SIZE, b"hello")
    assert b.read_slot(3 * cb.SLOT_SIZE) == (b"hello", False)
    with pytest.raises(cb.ChainBufferError, match="offset"):
        b.write_slot(7, b"x")
    with pytest.raises(cb.ChainBufferError, match="offset"):
        b.read_slot(8 * cb.SLOT_SIZE)
    with pytest.raises(cb.ChainBufferError, match="data"):
        b.write_slot(0, b"x" * (cb.SLOT_DATA + 1))


def test_corrupt_ring_indices_are_refused(path):
    b = cb.ChainBuffer.create(path, 8, 2, 2)
    b.enqueue(1, [0])
    mem = b.memory()
    head = b.ring_offset(1)  # the producer index, as any NF of the chain can write it
    assert b.ring_offset(0) == cb.HEADER_SIZE == 16384
    mem[head : head + 4] = struct.pack("<I", 1000)  # 1000 entries claimed in a ring of 8
    with pytest.raises(cb.ChainBufferError, match="corrupt"):
        b.dequeue(1, 1)
    assert b.ring_count(1) == 0  # and counted as empty, never as 1000
    assert b.enqueue(1, [0]) == 0  # nor as room to write past the ring


def test_corrupt_slot_meta_is_refused(path):
    b = cb.ChainBuffer.create(path, 8, 1, 1)
    b.write_slot(0, b"abc")
    mem = b.memory()
    base = b.slots_offset
    mem[base : base + 4] = struct.pack("<HH", 60000, 10)  # data_off far outside the slot
    with pytest.raises(cb.ChainBufferError, match="outside the slot"):
        b.read_slot(0)


def test_geometry_is_checked_against_the_file(path):
    b = cb.ChainBuffer.create(path, 16, 2, 2)
    b.close()
    os.truncate(path, cb.region_size(16, 2) - 4096)
    with pytest.raises(cb.ChainBufferError, match="geometry"):
        cb.ChainBuffer.open(path)
    with open(path, "r+b") as f:
        f.write(b"not a chain buffer")
    with pytest.raises(cb.ChainBufferError, match="magic"):
        cb.ChainBuffer.open(path)


@pytest.mark.parametrize(
    ("args", "field"),
    [((0, 1, 1), "n_slots"), ((8, 0, 1), "n_rings"), ((8, 17, 1), "n_rings"), ((8, 1, 9), "n_nfs")],
)
def test_bad_geometry_names_the_field(path, args, field):
    with pytest.raises(cb.ChainBufferError, match=field):
        cb.ChainBuffer.create(path, *args)
    assert not os.path.exists(path)


def test_bad_control_values(path):
    b = cb.ChainBuffer.create(path, 8, 1, 1)
    with pytest.raises(cb.ChainBufferError, match="ctl"):
        b.ctl = 7
    with pytest.raises(cb.ChainBufferError, match="batch"):
        b.batch = 0
    with pytest.raises(cb.ChainBufferError, match="batch"):
        b.batch = cb.MAX_BATCH + 1
    with pytest.raises(cb.ChainBufferError, match="ring"):
        b.ring_count(1)


def test_copy_cycles_grow_with_size(path):
    a = cb.ChainBuffer.create(path, 64, 1, 1)
    other = path + ".b"
    b = cb.ChainBuffer.create(other, 64, 1, 1)
    try:
        small = cb.copy_cycles(a, b, 64, 32, 200)
        big = cb.copy_cycles(a, b, 1500, 32, 200)
        assert 0 < small < big
    finally:
        os.unlink(other)
