"""Metrics: the exposition text (read back by a strict parser of format 0.0.4, also for any
names, values and label values hypothesis makes), the changed-counters log line, the HTTP
listener's routes and limits on loopback, each process's families, and a real `wgmesh
registrar --metrics` scraped after real STUN and DNS traffic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.procs import Client, RegistrarProcess, free_port
from wgmesh.errors import LocalProtocolError, RemoteProtocolError
from wgmesh.metricshttp import (
    HttpLimits,
    HttpListener,
    Response,
    log_counters,
    metrics_route,
    parse_request_line,
    respond,
)
from wgmesh.proto import stun
from wgmesh.proto.client import RegistrarClient
from wgmesh.proto.device import PeerUpdate
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.metrics import (
    CONTENT_TYPE,
    Family,
    Kind,
    Sample,
    changed,
    counter,
    counter_values,
    describe_all,
    describe_changes,
    gauge,
    labelled,
    render,
)
from wgmesh.registry import udpbatch

# -- a strict reader of the text format 0.0.4 --------------------------------------------------

Labels = tuple[tuple[str, str], ...]
Parsed = dict[str, tuple[str, str, dict[Labels, float]]]
"""Exposed name -> (type, help, label set -> value)."""

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
SPECIAL = {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf}


class BadText(Exception):
    pass


def unescape(text: str, escapes: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 == len(text) or text[i + 1] not in escapes:
                raise BadText(f"bad escape in {text!r}")
            out.append(escapes[text[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def read_labels(line: str, i: int) -> tuple[Labels, int]:
    """The labels of ``line`` from its ``{`` at ``i``, and the index after the ``}``."""
    labels: list[tuple[str, str]] = []
    i += 1
    while True:
        m = LABEL.match(line, i)
        if m is None or line[m.end() : m.end() + 2] != '="':
            raise BadText(f"bad label at {i} in {line!r}")
        name, i = m.group(), m.end() + 2
        value: list[str] = []
        while True:
            if i >= len(line):
                raise BadText(f"unterminated label value in {line!r}")
            ch = line[i]
            if ch == '"':
                break
            if ch == "\\":
                esc = {"\\": "\\", '"': '"', "n": "\n"}.get(line[i + 1 : i + 2])
                if esc is None:
                    raise BadText(f"bad escape in {line!r}")
                value.append(esc)
                i += 2
            else:
                value.append(ch)
                i += 1
        labels.append((name, "".join(value)))
        i += 1
        if line[i : i + 1] == "}":
            return tuple(labels), i + 1
        if line[i : i + 1] != ",":
            raise BadText(f"expected , or }} at {i} in {line!r}")
        i += 1


def parse_number(text: str) -> float:
    if text in SPECIAL:
        return SPECIAL[text]
    if not NUMBER.fullmatch(text):
        raise BadText(f"bad number {text!r}")
    return float(text)


def parse_exposition(text: str) -> Parsed:
    """Every family of ``text``; BadText for anything 0.0.4 does not allow (or that we never
    write: comments, untyped samples, a sample away from its family)."""
    if text and not text.endswith("\n"):
        raise BadText("the last line has no newline")
    out: Parsed = {}
    current: str | None = None
    for line in text.split("\n")[:-1]:
        if line.startswith("# HELP "):
            name, sep, help_text = line[7:].partition(" ")
            if not sep or not NAME.fullmatch(name) or name in out:
                raise BadText(f"bad HELP line {line!r}")
            out[name] = ("", unescape(help_text, {"\\": "\\", "n": "\n"}), {})
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            if name != current or out[name][0] or kind not in ("counter", "gauge"):
                raise BadText(f"bad TYPE line {line!r}")
            out[name] = (kind, out[name][1], out[name][2])
        elif line.startswith("#") or not line:
            raise BadText(f"unexpected line {line!r}")
        else:
            m = NAME.match(line)
            if m is None or m.group() != current or not out[current][0]:
                raise BadText(f"a sample outside its family: {line!r}")
            i = m.end()
            labels: Labels = ()
            if line[i : i + 1] == "{":
                labels, i = read_labels(line, i)
            if line[i : i + 1] != " ":
                raise BadText(f"no value in {line!r}")
            samples = out[current][2]
            key = tuple(sorted(labels))
            if key in samples:
                raise BadText(f"a label set twice: {line!r}")
            samples[key] = parse_number(line[i + 1 :])
    return out


def scrape_value(parsed: Parsed, name: str, **labels: str) -> float:
    return parsed[name][2][tuple(sorted(labels.items()))]


# -- rendering ---------------------------------------------------------------------------------


def test_render_exactly() -> None:
    text = render([
        counter("wgmesh_registrar_binding_requests", "plain Binding Requests answered", 12),
        labelled("wgmesh_registrar_rejected", "dropped, by reason", "reason",
                 {"replay": 3, "stale": 0}),
        gauge("wgmesh_registrar_zone_serial", "serial", 7),
        Family("g", Kind.GAUGE, "odd values", (Sample(1.5, (("a", "x"), ("b", "y"))),
                                              Sample(math.nan), Sample(-math.inf, (("a", "z"),)))),
    ])  # fmt: skip
    assert text == (
        "# HELP wgmesh_registrar_binding_requests_total plain Binding Requests answered\n"
        "# TYPE wgmesh_registrar_binding_requests_total counter\n"
        "wgmesh_registrar_binding_requests_total 12\n"
        "# HELP wgmesh_registrar_rejected_total dropped, by reason\n"
        "# TYPE wgmesh_registrar_rejected_total counter\n"
        'wgmesh_registrar_rejected_total{reason="replay"} 3\n'
        'wgmesh_registrar_rejected_total{reason="stale"} 0\n'
        "# HELP wgmesh_registrar_zone_serial serial\n"
        "# TYPE wgmesh_registrar_zone_serial gauge\n"
        "wgmesh_registrar_zone_serial 7\n"
        "# HELP g odd values\n"
        "# TYPE g gauge\n"
        'g{a="x",b="y"} 1.5\n'
        "g NaN\n"
        'g{a="z"} -Inf\n'
    )


def test_label_values_and_help_are_escaped() -> None:
    family = labelled("m", 'help with \\ and\nnewline and "quotes"', "v",
                      {'back\\slash "quoted"\nnext': 1})  # fmt: skip
    text = render([family])
    assert text.splitlines() == [
        '# HELP m_total help with \\\\ and\\nnewline and "quotes"',
        "# TYPE m_total counter",
        'm_total{v="back\\\\slash \\"quoted\\"\\nnext"} 1',
    ]
    parsed = parse_exposition(text)
    assert parsed["m_total"][1] == family.help
    assert scrape_value(parsed, "m_total", v='back\\slash "quoted"\nnext') == 1


@pytest.mark.parametrize(
    "build",
    [lambda: counter("1abc", "", 0), lambda: counter("a-b", "", 0),
     lambda: counter("x_total", "", 0), lambda: counter("x", "", -1),
     lambda: counter("x", "", math.nan), lambda: labelled("x", "", "__reserved", {"a": 1}),
     lambda: labelled("x", "", "bad-label", {"a": 1}),
     lambda: labelled("x", "", "l", {"\ud800": 1}),
     lambda: Family("x", Kind.GAUGE, "", (Sample(1), Sample(2))),
     lambda: Family("x", Kind.GAUGE, "", (Sample(1, (("a", "1"), ("a", "2"))),)),
     lambda: Family("x", Kind.GAUGE, "", (Sample(True),)),
     lambda: render([gauge("x", "", 1), gauge("x", "", 2)])],
)  # fmt: skip
def test_what_the_format_cannot_carry_is_our_bug(build: object) -> None:
    with pytest.raises(LocalProtocolError):
        build()  # type: ignore[operator]


def test_a_counter_and_a_gauge_of_one_base_name_are_two_names() -> None:
    parsed = parse_exposition(render([counter("x", "c", 1), gauge("x", "g", 2)]))
    assert parsed == {"x_total": ("counter", "c", {(): 1}), "x": ("gauge", "g", {(): 2})}


# hypothesis: any valid families render to text the strict reader gives back unchanged

names = st.from_regex(r"\A[a-zA-Z_:][a-zA-Z0-9_:]{0,20}\Z").filter(
    lambda n: not n.endswith("_total")
)
label_names = st.from_regex(r"\A[a-zA-Z_][a-zA-Z0-9_]{0,10}\Z").filter(
    lambda n: not n.startswith("__")
)
texts = st.text(
    alphabet=st.one_of(st.sampled_from('\\"\n{}=, #'), st.characters(blacklist_categories=["Cs"])),
    max_size=20,
)
counter_values_st = st.one_of(
    st.integers(0, 2**64), st.floats(min_value=0, allow_nan=False, allow_infinity=True)
)
gauge_values = st.one_of(st.integers(-(2**64), 2**64), st.floats())


@st.composite
def families(draw: st.DrawFn) -> Family:
    kind = draw(st.sampled_from(Kind))
    values = counter_values_st if kind is Kind.COUNTER else gauge_values
    label_sets = draw(
        st.lists(st.dictionaries(label_names, texts, max_size=3), max_size=4,
                 unique_by=lambda d: tuple(sorted(d.items())))
    )  # fmt: skip
    samples = tuple(Sample(draw(values), tuple(labels.items())) for labels in label_sets)
    return Family(draw(names), kind, draw(texts), samples)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=300, deadline=None)
@given(st.lists(families(), max_size=6, unique_by=lambda f: f.exposed))
def test_rendered_text_reads_back(fams: list[Family]) -> None:
    text = render(fams)
    text.encode("utf-8")  # what is served
    parsed = parse_exposition(text)
    assert list(parsed) == [f.exposed for f in fams]
    for f in fams:
        kind, help_text, samples = parsed[f.exposed]
        assert (kind, help_text) == (f.kind.value, f.help)
        assert len(samples) == len(f.samples)
        for s in f.samples:
            assert same(samples[tuple(sorted(s.labels))], float(s.value))


@given(st.text(max_size=200))
def test_the_reader_refuses_garbage_only_with_bad_text(text: str) -> None:
    with contextlib.suppress(BadText):
        parse_exposition(text)


# -- the changes for the log line ----------------------------------------------------------------


def test_changed_counters_and_their_line() -> None:
    before = counter_values([
        counter("wgmesh_daemon_pushes", "", 3),
        labelled("wgmesh_daemon_dns_lookups", "", "result", {"found": 1, "failed": 0}),
        gauge("wgmesh_daemon_registrar_reachable", "", 1),
    ])  # fmt: skip
    assert before == {"wgmesh_daemon_pushes": 3, 'wgmesh_daemon_dns_lookups{result="found"}': 1,
                      'wgmesh_daemon_dns_lookups{result="failed"}': 0}  # fmt: skip
    after = dict(before, **{'wgmesh_daemon_dns_lookups{result="failed"}': 4, "new": 2})
    changes = changed(before, after)
    assert [(c.series, c.before, c.after) for c in changes] == [
        ('wgmesh_daemon_dns_lookups{result="failed"}', 0, 4),
        ("new", 0, 2),
    ]
    line = describe_changes(changes, "wgmesh_daemon_")
    assert line == 'dns_lookups{result="failed"}=4 (+4), new=2 (+2)'
    assert changed(after, after) == ()
    assert describe_changes(changed({"x": 5}, {"x": 1})) == "x=1 (-4)"  # a reset shows
    assert describe_all([counter("p_a", "", 0), counter("p_b", "", 2), gauge("c", "", 9)],
                        "p_") == "b=2"  # fmt: skip
    assert describe_all([counter("a", "", 0)]) == "none"


async def test_the_counter_log_says_only_what_changed(caplog: pytest.LogCaptureFixture) -> None:
    value = {"n": 0}
    collected = asyncio.Event()

    def collect() -> list[Family]:
        collected.set()
        return [counter("p_hits", "", value["n"]), gauge("p_gauge", "", value["n"])]

    async def intervals(n: int) -> None:
        for _ in range(n):  # the line of an interval is logged before the next one is awaited
            collected.clear()
            await collected.wait()

    log = logging.getLogger("wgmesh.test.metrics")
    caplog.set_level(logging.INFO, logger=log.name)
    task = asyncio.create_task(log_counters(collect, 0.02, log, "p_"))
    await intervals(3)
    assert caplog.messages == []  # all counters 0: nothing changed
    value["n"] = 5
    await intervals(1)
    assert caplog.messages == ["counters: hits=5 (+5)"]  # the gauge is no counter
    await intervals(3)
    assert caplog.messages == ["counters: hits=5 (+5)"]
    value["n"] = 6
    await intervals(2)
    task.cancel()
    assert caplog.messages[1:] == ["counters: hits=6 (+1)"]


# -- the HTTP listener -----------------------------------------------------------------------------


def test_request_lines() -> None:
    assert parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == ("GET", "/metrics")
    assert parse_request_line(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n") == ("HEAD", "/metrics")
    for bad in (b"GET /metrics\r\n\r\n", b"GET  /metrics HTTP/1.1\r\n", b"get / HTTP/1.1\r\n",
                b"GET http://h/metrics HTTP/1.1\r\n", b"GET / HTTP/2\r\n", b"\x00\xff\r\n\r\n",
                b"GET /a\x7f HTTP/1.1\r\n"):  # fmt: skip
        with pytest.raises(RemoteProtocolError):
            parse_request_line(bad)


@given(st.binary(max_size=100))
def test_any_request_head_gets_an_answer(head: bytes) -> None:
    """Garbage only ever gives RemoteProtocolError from the parser, and an answer."""
    try:
        method, path = parse_request_line(head)
        assert path.startswith("/") and method.isupper()
    except RemoteProtocolError:
        pass
    response, _ = respond({"/metrics": lambda: Response(200, b"x")}, head)
    assert response.status in (200, 400, 404, 405)


FAMILIES = [counter("t_requests", "requests", 1), labelled("t_x", "x", "k", {"a\n": 2})]


async def exchange(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
async def listener() -> AsyncIterator[HttpListener]:
    http = await HttpListener.start(
        Endpoint.parse("127.0.0.1:0"),
        {"/metrics": metrics_route(lambda: FAMILIES)},
        HttpLimits(max_connections=2, read_timeout=0.5),
    )
    yield http
    http.close()
    await http.wait_closed()


async def test_metrics_is_served_and_other_requests_are_refused(listener: HttpListener) -> None:
    port = listener.port
    answer = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert f"Content-Type: {CONTENT_TYPE}" in lines and "Connection: close" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert scrape_value(parse_exposition(body.decode()), "t_x_total", k="a\n") == 2
    head_only = await exchange(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head_only.startswith(b"HTTP/1.1 200 OK") and head_only.endswith(b"\r\n\r\n")
    assert status_of(await exchange(port, b"GET /other HTTP/1.1\r\n\r\n")) == 404
    refused = await exchange(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status_of(refused) == 405 and b"\r\nAllow: GET, HEAD\r\n" in refused
    assert status_of(await exchange(port, b"BREW /metrics HTTP/1.1\r\n\r\n")) == 405
    assert status_of(await exchange(port, b"nonsense\r\n\r\n")) == 400


async def test_an_oversized_request_head_is_refused(listener: HttpListener) -> None:
    big = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 20_000 + b"\r\n\r\n"
    assert status_of(await exchange(listener.port, big)) == 431
    # the listener lives on
    assert status_of(await exchange(listener.port, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200


async def test_a_silent_client_times_out(listener: HttpListener) -> None:
    started = time.monotonic()
    assert status_of(await exchange(listener.port, b"GET /metr")) == 408
    assert 0.4 < time.monotonic() - started < 5
    assert listener.connections == 0


async def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Until the listener has seen what a client did (nothing tells us but its state)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_the_connection_cap_holds(listener: HttpListener) -> None:
    port = listener.port
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await wait_for(lambda: listener.connections == 2)
    assert status_of(await exchange(port, b"")) == 503  # a third: turned away at once
    assert status_of(await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")) == 503
    assert listener.rejected == 2 and listener.connections == 2
    idle[0][1].close()
    await wait_for(lambda: listener.connections == 1)
    assert status_of(await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200
    idle[1][1].close()
    await wait_for(lambda: listener.connections == 0)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_listener() -> None:
    http = await HttpListener.start(
        Endpoint.parse("[::1]:0"), {"/metrics": metrics_route(lambda: FAMILIES)}
    )
    try:
        answer = await exchange(http.port, b"GET /metrics HTTP/1.1\r\n\r\n", host="::1")
        assert status_of(answer) == 200
    finally:
        http.close()
        await http.wait_closed()


# -- each process's families ----------------------------------------------------------------------


async def test_the_registrar_maps_every_registry_counter(tmp_path: Path) -> None:
    from wgmesh.proto.dnssd import ZoneConfig
    from wgmesh.registry.server import MAPPED, Registrar, RegistrarSettings

    settings = RegistrarSettings(
        zone=ZoneConfig(origin="mesh.test.", ns=("ns1.mesh.test.",), hostmaster="h.mesh.test."),
        private_key=os.urandom(32), listen="127.0.0.1", stun_port=0, stun_alt_port=0, dns_port=0,
        state_dir=tmp_path, open_registration=True, log_counters=0,
    )  # fmt: skip
    r = await Registrar.start(settings)
    try:
        assert set(r.registry.counters) <= MAPPED, "a registry counter without a family"
        parsed = parse_exposition(render(r.metrics()))
        assert "wgmesh_registrar_other_total" not in parsed
        assert all(name.startswith("wgmesh_registrar_") for name in parsed)
        assert scrape_value(parsed, "wgmesh_registrar_rejected_total", reason="replay") == 0
        assert scrape_value(parsed, "wgmesh_registrar_rate_limited_total", limit="key") == 0
        assert scrape_value(parsed, "wgmesh_registrar_dns_responses_total", rcode="NOERROR") == 0
        r.registry.counters["replay"] += 2
        r.zone.stats.answered += 3
        r.zone.stats.nxdomain += 1
        parsed = parse_exposition(render(r.metrics()))
        assert scrape_value(parsed, "wgmesh_registrar_rejected_total", reason="replay") == 2
        assert scrape_value(parsed, "wgmesh_registrar_dns_responses_total", rcode="NOERROR") == 2
        assert scrape_value(parsed, "wgmesh_registrar_dns_responses_total", rcode="NXDOMAIN") == 1
    finally:
        await r.close()


async def test_the_daemon_maps_every_client_counter() -> None:
    from wgmesh.daemon.service import CLIENT_COUNTED, CLIENT_DROPPED, Daemon, DaemonSettings
    from wgmesh.wg.fake import FakeWireGuard

    registrar = Endpoint.parse("192.0.2.1:3478")
    daemon = Daemon(DaemonSettings("wg0", registrar, bytes(32), "mesh.test."), FakeWireGuard())
    parsed = parse_exposition(render(daemon.metrics()))  # before it runs: no client yet
    assert scrape_value(parsed, "wgmesh_daemon_probe_rounds_total") == 0
    daemon.client = RegistrarClient(
        DaemonSettings("wg0", registrar, bytes(32), "mesh.test.").client_config(),
        os.urandom(32), registrar, os.urandom(32), 1000.0, os.urandom,
    )  # fmt: skip
    unmapped = set(daemon.client.counters) - set(CLIENT_COUNTED) - set(CLIENT_DROPPED)
    assert not unmapped, "a client counter without a family"
    daemon.client.counters["late"] += 1
    daemon.stats.count_applied([PeerUpdate(bytes(32), endpoint=registrar, handshake_now=True),
                                PeerUpdate(bytes(32), remove=True)])  # fmt: skip
    daemon.stats.lookups["failed"] += 1
    parsed = parse_exposition(render(daemon.metrics()))
    assert "wgmesh_daemon_other_total" not in parsed
    assert all(name.startswith("wgmesh_daemon_") for name in parsed)
    assert scrape_value(parsed, "wgmesh_daemon_control_dropped_total", reason="late") == 1
    assert scrape_value(parsed, "wgmesh_daemon_peer_updates_total", action="endpoint") == 1
    assert scrape_value(parsed, "wgmesh_daemon_peer_updates_total", action="handshake") == 1
    assert scrape_value(parsed, "wgmesh_daemon_peer_updates_total", action="removed") == 1
    assert scrape_value(parsed, "wgmesh_daemon_peer_updates_total", action="added") == 0
    assert scrape_value(parsed, "wgmesh_daemon_dns_lookups_total", result="failed") == 1
    assert scrape_value(parsed, "wgmesh_daemon_datagrams_sent_total", via="wireguard") == 0
    assert parsed["wgmesh_daemon_peers"][0] == "gauge"


# -- a real registrar, scraped -------------------------------------------------------------------


def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def registrar_with_metrics(tmp_path: Path) -> Iterator[tuple[RegistrarProcess, int]]:
    port = free_port()
    r = RegistrarProcess(tmp_path, ["--open", "--metrics", f"127.0.0.1:{port}",
                                    "--log-counters", "1"])  # fmt: skip
    r.start()
    try:
        yield r, port
    finally:
        r.kill()


def test_a_real_registrar_counts_what_it_serves(
    registrar_with_metrics: tuple[RegistrarProcess, int],
) -> None:
    r, port = registrar_with_metrics
    deadline = time.monotonic() + 10
    while "metrics on http://" not in r.log.read_text():
        assert time.monotonic() < deadline, r.log.read_text()
        time.sleep(0.05)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        request = stun.encode(stun.StunMessage(stun.BINDING_REQUEST, os.urandom(12), ()))
        s.sendto(request, ("127.0.0.1", r.stun_port))
        reply, _ = s.recvfrom(2048)
        assert stun.decode(reply).msg_type == stun.BINDING_SUCCESS
    query = dns.message.make_query("mesh.test", "SOA")
    answer = dns.query.udp(query, "127.0.0.1", port=r.dns_port, timeout=2)
    assert answer.rcode() == 0
    alice = Client(r.key)
    alice.register(r.endpoint, name="alice")
    alice.close()

    status, content_type, text = scrape(port)
    assert status == 200 and content_type == CONTENT_TYPE
    parsed = parse_exposition(text)
    assert scrape_value(parsed, "wgmesh_registrar_binding_requests_total") >= 1
    assert scrape_value(parsed, "wgmesh_registrar_registrations_total") >= 1
    assert scrape_value(parsed, "wgmesh_registrar_watches_total") >= 1
    assert scrape_value(parsed, "wgmesh_registrar_dns_queries_total") >= 1
    assert scrape_value(parsed, "wgmesh_registrar_dns_responses_total", rcode="NOERROR") >= 1
    assert scrape_value(parsed, "wgmesh_registrar_dns_rrl_total", decision="answered") >= 1
    assert scrape_value(parsed, "wgmesh_registrar_peers") == 1
    if udpbatch.available():
        assert scrape_value(parsed, "wgmesh_registrar_udp_received_total", socket="dns") >= 1
        assert scrape_value(parsed, "wgmesh_registrar_udp_sent_total", socket="stun") >= 1
    assert scrape(port, "/nothing-here")[0] == 404

    deadline = time.monotonic() + 10  # the periodic line, every second while things change
    while "counters: " not in r.log.read_text():
        assert time.monotonic() < deadline, r.log.read_text()
        time.sleep(0.1)
    line = next(ln for ln in r.log.read_text().splitlines() if "counters: " in ln)
    assert "binding_requests=" in line and "dns_queries=" in line
    assert "wgmesh_registrar_" not in line
    r.stop()
    assert "stopping; counters since the start: " in r.log.read_text()
    assert r.proc is not None and r.proc.returncode == 0


def test_a_restarted_registrar_agrees_no_key_again(
    registrar_with_metrics: tuple[RegistrarProcess, int],
) -> None:
    """A peer's shared key is stored wrapped: after kill -9 and a restart, the peer's next
    registration opens with it, and the registrar counts no X25519 step (a restart at a million
    peers used to re-key every one of them, 2,000 a second)."""
    r, port = registrar_with_metrics
    alice = Client(r.key)
    alice.register(r.endpoint, name="alice")
    wait_log(lambda: "metrics on http://" in r.log.read_text(), r)
    first = scrape_value(parse_exposition(scrape(port)[2]), "wgmesh_registrar_key_agreements_total")
    assert first >= 1  # the first contact
    time.sleep(0.6)  # the refresh's flush (an acknowledged first contact is on disk at once)
    r.kill()
    r.start()
    wait_log(lambda: r.log.read_text().count("metrics on http://") == 2, r)
    alice.register(r.endpoint, name="alice")
    parsed = parse_exposition(scrape(port)[2])
    assert scrape_value(parsed, "wgmesh_registrar_registrations_total") >= 1
    assert scrape_value(parsed, "wgmesh_registrar_key_agreements_total") == 0
    alice.close()


def wait_log(done: Callable[[], bool], r: RegistrarProcess, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, r.log.read_text()
        time.sleep(0.05)
