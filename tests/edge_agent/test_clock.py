"""Clock provenance stamps: the kernel's sync status, boot id, seconds since boot."""

from __future__ import annotations

from pathlib import Path

from edge_agent.clock import Stamper, boot_id, boot_seconds, kernel_clock_synced
from fleet_protocol import Kind, Presence, PresenceStatus, decode, encode


def _msg(seq: int) -> Presence:
    return Presence(v=1, device="dev-001", seq=seq, ts=1.7e9, status=PresenceStatus.ONLINE)


def test_the_kernel_answers_without_privileges() -> None:
    # adjtimex(2) with modes = 0 is a read any user may make; here it must answer.
    assert kernel_clock_synced() in (True, False)
    assert boot_seconds() > 0
    own = boot_id()
    assert own is not None and len(own) == 8
    assert boot_id(Path("/nonexistent")) is None


def test_unsynchronised_messages_are_always_stamped_synchronised_ones_until_taught() -> None:
    synced = [False]
    mono = [100.0]
    st = Stamper(synced=lambda: synced[0], boot="ab12cd34", mono=lambda: mono[0])
    m = st(_msg(1))
    assert (m.boot_id, m.mono, m.clock_synced) == ("ab12cd34", 100.0, False)
    assert decode(Kind.PRESENCE, encode(m)) == m
    synced[0] = True
    mono[0] = 160.0
    m = st(_msg(2))
    assert (m.boot_id, m.mono, m.clock_synced) == ("ab12cd34", 160.0, None)
    st.confirmed([(1, 1)])  # only the unsynced one: the offset is not known yet
    assert st(_msg(3)).mono is not None
    st.confirmed([(2, 3)])
    assert st.taught
    bare = st(_msg(4))
    assert (bare.boot_id, bare.mono, bare.clock_synced) == (None, None, None)
    # The kernel loses sync again: stamped again, whatever was taught.
    synced[0] = False
    assert st(_msg(5)).clock_synced is False and st(_msg(5)).mono is not None


def test_unknown_status_is_not_reported_as_unsynchronised() -> None:
    st = Stamper(synced=lambda: None, boot="ab12cd34", mono=lambda: 5.0)
    assert st(_msg(1)).clock_synced is None
