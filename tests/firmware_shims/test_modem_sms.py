"""SMS over AT: the pure parsers (table-driven), and sending between two simulated
modems on real ptys through pyserial and the simulated SMS centre."""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from firmware_shims.errors import ProbeTimeout
from firmware_shims.modem.at import parse_response
from firmware_shims.modem.port import AtPort
from firmware_shims.modem.probe import ModemProbe
from firmware_shims.modem.sim import ModemEngine, PtyModem, SimOptions
from firmware_shims.modem.sms import (
    SmsError,
    decode_ucs2,
    delete_sms,
    encode_ucs2,
    is_gsm7,
    list_sms,
    parse_cmgl,
    parse_cmgr,
    parse_cmgs,
    parse_cmti,
    parse_scts,
    read_sms,
    send_sms,
)
from firmware_shims.modem.smsc import SmsCentre

pytestmark = pytest.mark.timeout(60)
CASES = tomllib.loads((Path(__file__).parent / "data" / "modem_sms_cases.toml").read_text())
AGENT_NO, DISTRICT_NO = "+84961000001", "+84912000000"


@pytest.mark.parametrize("case", CASES["cmti"], ids=lambda c: c["name"])
def test_cmti(case: dict[str, Any]) -> None:
    got = parse_cmti(case["line"])
    assert got == ((case["storage"], case["index"]) if "index" in case else None)


@pytest.mark.parametrize("case", CASES["scts"], ids=lambda c: c["name"])
def test_scts(case: dict[str, Any]) -> None:
    assert parse_scts(case["text"]) == case.get("ts")


@pytest.mark.parametrize("case", CASES["cmgr"], ids=lambda c: c["name"])
def test_cmgr(case: dict[str, Any]) -> None:
    msg = parse_cmgr(
        parse_response(case["command"], case["raw"]), case["index"], ucs2=case.get("ucs2", False)
    )
    if "text" not in case:
        assert msg is None
        return
    assert msg is not None
    assert (msg.index, msg.status, msg.sender, msg.scts, msg.text) == (
        case["index"],
        case["status"],
        case["sender"],
        case["ts"],
        case["text"],
    )


@pytest.mark.parametrize("case", CASES["cmgl"], ids=lambda c: c["name"])
def test_cmgl(case: dict[str, Any]) -> None:
    msgs = parse_cmgl(parse_response(case["command"], case["raw"]))
    assert [m.index for m in msgs] == case["indexes"]
    assert [m.sender for m in msgs] == case["senders"]
    assert [m.text for m in msgs] == case["texts"]


@pytest.mark.parametrize("case", CASES["cmgs"], ids=lambda c: c["name"])
def test_cmgs(case: dict[str, Any]) -> None:
    assert parse_cmgs(parse_response(case["command"], case["raw"])) == case.get("mr")


def test_alphabets() -> None:
    assert is_gsm7("LOA1 d=lt-01 f=sim_failure@1690766100")
    assert not is_gsm7("Cháy SIM")  # á is not in the GSM basic alphabet
    assert decode_ucs2(encode_ucs2("Mạng chập chờn")) == "Mạng chập chờn"
    assert decode_ucs2("00") is None and decode_ucs2("zz00") is None


# --- two modems on ptys, one SMS centre -------------------------------------------------


class Pair:
    def __init__(self, centre: SmsCentre, a: PtyModem, b: PtyModem, pa: AtPort, pb: AtPort):
        self.centre, self.agent, self.district = centre, a, b
        self.agent_port, self.district_port = pa, pb


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    centre = SmsCentre()
    ea = ModemEngine("quectel", options=SimOptions(urc_rate=0.0, seed=1))
    eb = ModemEngine("simcom", options=SimOptions(urc_rate=0.0, seed=2))
    centre.attach(ea, AGENT_NO)
    centre.attach(eb, DISTRICT_NO)
    async with PtyModem(ea, tmp_path / "a") as a, PtyModem(eb, tmp_path / "b") as b:
        pa, pb = AtPort(a.link), AtPort(b.link)
        try:
            yield Pair(centre, a, b, pa, pb)
        finally:
            await pa.aclose()
            await pb.aclose()


async def _wait(cond: Any, timeout: float = 10.0) -> None:
    """Poll ``cond`` (the simulator's state has no event to wait on) until true."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {cond}"
        await asyncio.sleep(0.02)


async def test_send_receive_read_delete_over_ptys(pair: Pair) -> None:
    assert (await pair.district_port.command("AT+CNMI=2,1,0,0,0")).ok
    mr = await send_sms(pair.agent_port, DISTRICT_NO, "LOA1 d=lt-01 s=7")
    assert 0 <= mr <= 255
    # The +CMTI URC reaches the district's port between exchanges.
    async with asyncio.timeout(10):
        while not any(parse_cmti(u) for u in pair.district_port.urcs):
            await pair.district_port.command("AT", timeout=2)
            await asyncio.sleep(0.05)
    _, index = next(c for u in pair.district_port.urcs if (c := parse_cmti(u)))
    msg = await read_sms(pair.district_port, index)
    assert msg is not None and (msg.sender, msg.text) == (AGENT_NO, "LOA1 d=lt-01 s=7")
    assert msg.status == "REC UNREAD" and msg.scts is not None
    listed = await list_sms(pair.district_port)
    assert [(m.index, m.status) for m in listed] == [(index, "REC READ")]
    await delete_sms(pair.district_port, index)
    assert await list_sms(pair.district_port) == []


async def test_vietnamese_text_goes_as_ucs2(pair: Pair) -> None:
    await send_sms(pair.agent_port, DISTRICT_NO, "Cụm 3: cháy SIM")
    await _wait(lambda: pair.district.engine.sms.store)
    (stored,) = pair.district.engine.sms.store.values()
    assert stored.text == "Cụm 3: cháy SIM"
    # The agent's modem was switched to UCS2 for it.
    assert 'AT+CSCS="UCS2"'[2:] in pair.agent.engine.sms.log


async def test_refused_sends_name_the_cms_error(pair: Pair) -> None:
    pair.agent.engine.faults.set("no_service")
    with pytest.raises(SmsError, match=r"\+CMS ERROR: 331 \(no network service\)"):
        await send_sms(pair.agent_port, DISTRICT_NO, "x")
    pair.agent.engine.faults.clear("no_service")
    pair.agent.engine.faults.set("sim_failure")
    with pytest.raises(SmsError, match="313"):
        await send_sms(pair.agent_port, DISTRICT_NO, "x")
    pair.agent.engine.faults.clear("sim_failure")
    # Data blocked: SMS still goes through the control plane.
    pair.agent.engine.faults.set("data_blocked")
    await send_sms(pair.agent_port, DISTRICT_NO, "data down")
    assert [s.text for s in pair.centre.submitted] == ["data down"]
    with pytest.raises(SmsError, match="does not fit"):
        await send_sms(pair.agent_port, DISTRICT_NO, "x" * 161)


async def test_held_by_the_centre_until_the_recipient_registers(pair: Pair) -> None:
    pair.district.engine.faults.set("no_service")
    await send_sms(pair.agent_port, DISTRICT_NO, "later")
    assert pair.centre.waiting and not pair.district.engine.sms.store
    pair.district.engine.faults.clear("no_service")
    await _wait(lambda: pair.district.engine.sms.store)
    assert not pair.centre.waiting


async def test_no_prompt_times_out_and_aborts(pair: Pair) -> None:
    pair.agent.engine.faults.set("unresponsive")
    with pytest.raises(ProbeTimeout, match=r"no answer|prompt"):
        await send_sms(pair.agent_port, DISTRICT_NO, "x", timeout=0.5)
    pair.agent.engine.faults.clear("unresponsive")
    # The port resynchronises: the next command works.
    assert (await pair.agent_port.command("AT", timeout=2)).ok


async def test_send_shares_the_port_lock_with_polling(pair: Pair) -> None:
    """A poll started while an SMS is being sent waits for it: no poll command lands
    between AT+CMGS and its text (which would be sent as the SMS body)."""
    probe = ModemProbe(pair.agent_port, "quectel")
    async with asyncio.TaskGroup() as tg:
        for i in range(3):
            tg.create_task(send_sms(pair.agent_port, DISTRICT_NO, f"msg {i}"))
        polls = [tg.create_task(probe.read()) for _ in range(3)]
    readings = [p.result() for p in polls]
    assert all(r.state.responding and r.state.sim.value == "ready" for r in readings)
    assert sorted(s.text for s in pair.centre.submitted) == ["msg 0", "msg 1", "msg 2"]
    log = pair.agent.engine.sms.log
    for i, entry in enumerate(log):
        if entry.startswith("+CMGS="):
            assert log[i + 1].startswith("SENT "), log
