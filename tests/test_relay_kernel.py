"""The relay's kernel path (wgmesh.registry.relaynft): the ruleset as text, the adapter against a
fake nft, nft's own check of the text in a lab namespace, and real forwarding between
wireguard-go peers behind a port-restricted and a symmetric NAT, the adapter running in the
relay host's namespace as its own process.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from wgmesh.errors import LocalProtocolError
from wgmesh.lab.nat import REBIND_RANGES
from wgmesh.lab.relaylab import (
    KernelRelayProcess,
    PortWatch,
    RelaySockets,
    Seen,
    learn_mapping,
    send_from_port,
    stun_probe,
    synthetic_pairs,
    wait_until,
    wireguard_like,
)
from wgmesh.lab.topology import Host, Lab, RouterKind
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.relayroute import RelayLeg, RelayPair
from wgmesh.registry.relaynft import (
    Forwarding,
    KernelRelay,
    KernelRelayError,
    LegCounter,
    RelayTable,
    fingerprint,
    forwarding_of,
    parse_comment,
    parse_counters,
    render_delete,
    render_replace,
    render_ruleset,
    render_update,
    table_comment,
)

RELAY = ipaddress.IPv4Address("203.0.113.10")
PORTS = range(40000, 40100)
TABLE = RelayTable(RELAY, PORTS)


def pair(pa: int, a: str, pb: int, b: str) -> RelayPair:
    return RelayPair(RelayLeg(pa, Endpoint.parse(a)), RelayLeg(pb, Endpoint.parse(b)))


P1 = pair(40000, "198.51.100.11:51820", 40001, "198.51.100.12:61234")
P2 = pair(40002, "198.51.100.11:51820", 40003, "192.0.2.7:4500")


# -- the ruleset as text ---------------------------------------------------------------------


def test_ruleset_of_one_pair() -> None:
    text = render_ruleset(TABLE, [P1])
    assert text == (
        "table ip wgmesh_relay {\n"
        f'comment "wgmesh relay relay-only {fingerprint(TABLE)}"\n'
        "set legs { type inet_service . ipv4_addr . inet_service; counter; elements = { "
        "40000 . 198.51.100.11 . 51820, 40001 . 198.51.100.12 . 61234 }; }\n"
        "set legs_out { type inet_service . ipv4_addr . inet_service; elements = { "
        "40000 . 198.51.100.11 . 51820, 40001 . 198.51.100.12 . 61234 }; }\n"
        "map twin { type inet_service : inet_service; elements = { "
        "40000 : 40001, 40001 : 40000 }; }\n"
        "map peer_addr { type inet_service : ipv4_addr; elements = { "
        "40000 : 198.51.100.11, 40001 : 198.51.100.12 }; }\n"
        "map peer_port { type inet_service : inet_service; elements = { "
        "40000 : 51820, 40001 : 61234 }; }\n"
        "chain prerouting {\n"
        "type filter hook prerouting priority raw; policy accept;\n"
        "ip daddr 203.0.113.10 udp dport 40000-40099 jump relay_in\n"
        "}\n"
        "chain relay_in {\n"
        "notrack\n"
        "@th,96,32 != 0x2112a442 udp dport . ip saddr . udp sport @legs "
        "udp sport set udp dport map @twin ip daddr set udp sport map @peer_addr "
        "udp dport set udp sport map @peer_port accept\n"
        'counter comment "not forwarded: for the relay sockets"\n'
        "}\n"
        "chain output {\n"
        "type filter hook output priority raw; policy accept;\n"
        "ip saddr 203.0.113.10 udp sport 40000-40099 notrack\n"
        "}\n"
        "chain forward {\n"
        "type filter hook forward priority filter - 10; policy accept;\n"
        "udp sport . ip daddr . udp dport @legs_out ip saddr set 203.0.113.10 accept\n"
        'counter drop comment "not relayed: dropped"\n'
        "}\n"
        "}\n"
    )


def test_ruleset_without_pairs_and_shared_forwarding() -> None:
    text = render_ruleset(RelayTable(RELAY, range(3479, 3480), Forwarding.SHARED), [])
    assert "elements" not in text
    assert "udp dport 3479 jump relay_in" in text
    assert "drop" not in text  # a host that routes for others keeps doing so
    assert 'comment "wgmesh relay shared ' in text
    assert "ct " not in text  # a ct match would turn conntrack on for the whole namespace


def test_replace_and_delete_name_only_our_table() -> None:
    replace = render_replace(TABLE, [P1])
    assert replace.startswith("table ip wgmesh_relay\ndelete table ip wgmesh_relay\n")
    assert render_delete(TABLE) == "table ip wgmesh_relay\ndelete table ip wgmesh_relay\n"
    tables = set(re.findall(r"table (\w+ \w+)", replace))
    assert tables == {"ip wgmesh_relay"}


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([pair(39999, "198.51.100.11:1", 40001, "198.51.100.12:2")], "outside 40000-40099"),
        ([P1, pair(40001, "192.0.2.1:1", 40005, "192.0.2.2:2")], "40001 is in two pairs"),
        ([pair(40000, "[2001:db8::1]:1", 40001, "192.0.2.2:2")], "is not IPv4"),
        ([pair(40000, "203.0.113.10:1", 40001, "192.0.2.2:2")], "relay's own address"),
    ],
)
def test_ruleset_rejects_what_it_cannot_hold(pairs: list[RelayPair], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        render_ruleset(TABLE, pairs)
    with pytest.raises(ValueError, match=re.escape(message)):
        render_update(TABLE, [], pairs)


def test_table_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="bad relay port range"):
        RelayTable(RELAY, range(0))
    with pytest.raises(ValueError, match="bad relay port range"):
        RelayTable(RELAY, range(40000, 40100, 2))
    with pytest.raises(ValueError, match="IPv4 only"):
        KernelRelay("2001:db8::1", PORTS)


def test_update_touches_only_what_changed() -> None:
    moved = pair(40000, "198.51.100.11:51820", 40001, "198.51.100.12:62000")
    assert render_update(TABLE, [P1, P2], [P2, moved]) == (
        "delete element ip wgmesh_relay legs { 40001 . 198.51.100.12 . 61234 }\n"
        "delete element ip wgmesh_relay legs_out { 40001 . 198.51.100.12 . 61234 }\n"
        "delete element ip wgmesh_relay peer_port { 40001 }\n"
        "add element ip wgmesh_relay legs { 40001 . 198.51.100.12 . 62000 }\n"
        "add element ip wgmesh_relay legs_out { 40001 . 198.51.100.12 . 62000 }\n"
        "add element ip wgmesh_relay peer_port { 40001 : 62000 }\n"
    )
    assert render_update(TABLE, [P1, P2], [P2, P1]) == ""


def test_update_adds_and_removes_whole_pairs() -> None:
    added = render_update(TABLE, [P1], [P1, P2])
    assert "delete" not in added
    assert "add element ip wgmesh_relay twin { 40002 : 40003, 40003 : 40002 }\n" in added
    assert added.count("\n") == 5  # one line per set or map
    removed = render_update(TABLE, [P1, P2], [P1])
    assert "add element" not in removed
    assert "delete element ip wgmesh_relay twin { 40002, 40003 }\n" in removed


def test_render_at_scale_is_cheap() -> None:
    pairs = synthetic_pairs(5000, 20000)
    table = RelayTable(RELAY, range(20000, 30000))
    start = time.perf_counter()
    text = render_ruleset(table, pairs)
    took = time.perf_counter() - start
    legs = text.split("set legs {", 1)[1].split("}", 1)[0]
    assert legs.count(",") + 1 == 10000
    assert took < 1.0, f"rendering 5,000 pairs took {took:.2f} s"
    start = time.perf_counter()
    moved = [
        *pairs[1:],
        RelayPair(pairs[0].a, RelayLeg(pairs[0].b.port, Endpoint.of("192.0.2.1", 9))),
    ]
    assert render_update(table, pairs, moved).count("\n") == 6
    assert time.perf_counter() - start < 0.5


# Captured from `nft -j list set ip wgmesh_relay legs` (nft 1.0.6) after a ping through the relay.
LEGS_JSON = (
    '{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", '
    '"json_schema_version": 1}}, {"set": {"family": "ip", "name": "legs", "table": '
    '"wgmesh_relay", "type": ["inet_service", "ipv4_addr", "inet_service"], "handle": 4, '
    '"elem": [{"elem": {"val": {"concat": [40001, "198.51.100.12", 61234]}, "counter": '
    '{"packets": 4, "bytes": 548}}}, {"elem": {"val": {"concat": [40000, "198.51.100.11", '
    '51820]}, "counter": {"packets": 5, "bytes": 668}}}], "stmt": [{"counter": null}]}}]}'
)


def test_parse_counters() -> None:
    assert parse_counters(LEGS_JSON) == {
        "40001 . 198.51.100.12 . 61234": LegCounter(4, 548),
        "40000 . 198.51.100.11 . 51820": LegCounter(5, 668),
    }
    empty = LEGS_JSON.split('"elem"', maxsplit=1)[0] + '"stmt": []}}]}'
    assert parse_counters(empty) == {}


def test_fingerprint_names_everything_but_the_elements() -> None:
    prints = {
        fingerprint(TABLE),
        fingerprint(RelayTable(RELAY, range(40000, 40101))),
        fingerprint(RelayTable(ipaddress.IPv4Address("203.0.113.11"), PORTS)),
        fingerprint(RelayTable(RELAY, PORTS, Forwarding.SHARED)),
    }
    assert len(prints) == 4 and all(re.fullmatch("[0-9a-f]{16}", p) for p in prints)
    assert table_comment(TABLE) == f"wgmesh relay relay-only {fingerprint(TABLE)}"
    assert render_ruleset(TABLE, [P1]).count(fingerprint(TABLE)) == 1


def test_parse_comment_and_mode() -> None:
    terse = 'table ip wgmesh_relay {\n\tcomment "wgmesh relay relay-only 0123"\n\tset legs {\n'
    assert parse_comment(terse) == "wgmesh relay relay-only 0123"
    assert parse_comment("table ip wgmesh_relay {\n}\n") is None
    assert forwarding_of("wgmesh relay relay-only 0123") is Forwarding.RELAY_ONLY
    assert forwarding_of("wgmesh relay shared 0123") is Forwarding.SHARED
    assert forwarding_of("wgmesh relay bogus 0123") is None
    assert forwarding_of("someone else's table") is None
    assert forwarding_of(None) is None


# -- the adapter against a fake nft ----------------------------------------------------------


class FakeNft:
    """Records every nft call; answers from a script of (predicate, result)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], str | None]] = []
        self.comment: str | None = None
        """Our table's comment; None: no table."""
        self.fail_updates = False
        self.counters_json = LEGS_JSON

    def __call__(
        self, argv: Sequence[str], stdin: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        args = tuple(argv)
        self.calls.append((args, stdin))

        def done(rc: int = 0, out: str = "", err: str = "") -> subprocess.CompletedProcess[str]:
            return subprocess.CompletedProcess(list(argv), rc, out, err)

        if args[1:3] == ("-t", "list"):
            if self.comment is None:
                return done(1, err="Error: No such file or directory")
            return done(out=f'table ip wgmesh_relay {{\n\tcomment "{self.comment}"\n}}\n')
        if args[1:3] == ("-j", "list"):
            return done(out=self.counters_json)
        if args[1:] == ("-f", "-") and stdin is not None:
            if stdin.startswith("delete element") or stdin.startswith("add element"):
                if self.fail_updates:
                    return done(1, err="Error: Could not process rule: No such file or directory")
                return done()
            if "delete table" in stdin:
                m = re.search(r'^comment "([^"]*)"$', stdin, re.MULTILINE)
                self.comment = m.group(1) if m else None
            return done()
        if args[1:3] == ("-c", "-f"):
            return done()
        return done(1, err=f"unexpected {args}")

    def transactions(self) -> list[str]:
        return [s for a, s in self.calls if a[1:] == ("-f", "-") and s is not None]


@pytest.fixture
def proc_sys(tmp_path: Path) -> Path:
    (tmp_path / "net/ipv4").mkdir(parents=True)
    (tmp_path / "net/ipv4/ip_forward").write_text("0\n")
    return tmp_path


def adapter(fake: FakeNft, proc_sys: Path, forwarding: Forwarding | None = None) -> KernelRelay:
    return KernelRelay(RELAY, PORTS, runner=fake, proc_sys=proc_sys, forwarding=forwarding)


def test_start_turns_forwarding_on_and_replaces_the_table(proc_sys: Path) -> None:
    fake = FakeNft()
    kr = adapter(fake, proc_sys)
    kr.start([P1])
    assert (proc_sys / "net/ipv4/ip_forward").read_text() == "1\n"
    assert kr.enabled_ip_forward and kr.table.forwarding is Forwarding.RELAY_ONLY
    assert fake.transactions() == [render_replace(TABLE, [P1])]
    assert kr.pairs == (P1,) and kr.replacements == 1


def test_forwarding_mode_follows_ip_forward_and_the_old_table(proc_sys: Path) -> None:
    (proc_sys / "net/ipv4/ip_forward").write_text("1\n")
    fake = FakeNft()
    kr = adapter(fake, proc_sys)
    kr.start()
    assert kr.table.forwarding is Forwarding.SHARED and not kr.enabled_ip_forward
    # a restart after we had turned forwarding on ourselves: our table remembers
    fake.comment = "wgmesh relay relay-only 0123456789abcdef"
    again = adapter(fake, proc_sys)
    again.start()
    assert again.table.forwarding is Forwarding.RELAY_ONLY
    forced = adapter(FakeNft(), proc_sys, forwarding=Forwarding.SHARED)
    forced.start()
    assert forced.table.forwarding is Forwarding.SHARED


def test_start_keeps_a_previous_runs_table_until_the_first_update(proc_sys: Path) -> None:
    fake = FakeNft()
    fake.comment = table_comment(TABLE)  # left by a run that was killed
    kr = adapter(fake, proc_sys)
    kr.start()
    kept = kr.pairs
    assert fake.transactions() == [] and kept is None  # still forwarding what it held
    assert kr.counters() == {}
    kr.set_pairs([P1])  # what the restored state says, in one transaction
    assert fake.transactions() == [render_replace(TABLE, [P1])] and kr.pairs == (P1,)
    kr.set_pairs([P1, P2])
    assert fake.transactions()[1:] == [render_update(TABLE, [P1], [P1, P2])]


def test_start_replaces_a_table_it_cannot_trust(proc_sys: Path) -> None:
    fake = FakeNft()
    other = RelayTable(RELAY, range(40000, 40200))  # the port range changed since
    fake.comment = table_comment(other)
    kr = adapter(fake, proc_sys)
    kr.start()
    assert fake.transactions() == [render_replace(TABLE, [])] and kr.pairs == ()
    fake.comment = table_comment(TABLE)
    given = adapter(fake, proc_sys)
    given.start([P2])  # pairs given: replaced at once even when the table is ours
    assert fake.transactions()[-1] == render_replace(TABLE, [P2])


def test_set_pairs_sends_only_the_change(proc_sys: Path) -> None:
    fake = FakeNft()
    kr = adapter(fake, proc_sys)
    kr.start([P1])
    kr.set_pairs([P1, P2])
    kr.set_pairs([P1, P2])  # nothing changed: no nft call
    assert fake.transactions()[1:] == [render_update(TABLE, [P1], [P1, P2])]
    assert kr.pairs == (P1, P2) and kr.replacements == 1


def test_a_failed_update_replaces_the_table(proc_sys: Path) -> None:
    fake = FakeNft()
    kr = adapter(fake, proc_sys)
    kr.start([P1])
    fake.fail_updates = True
    kr.set_pairs([P2])
    assert fake.transactions()[-1] == render_replace(TABLE, [P2])
    assert kr.pairs == (P2,) and kr.replacements == 2


def test_set_pairs_needs_start_and_valid_pairs(proc_sys: Path) -> None:
    kr = adapter(FakeNft(), proc_sys)
    with pytest.raises(LocalProtocolError, match="start"):
        kr.set_pairs([P1])
    kr.start()
    with pytest.raises(ValueError, match="in two pairs"):
        kr.set_pairs([P1, pair(40001, "192.0.2.1:1", 40009, "192.0.2.2:2")])
    assert kr.pairs == ()


def test_counters_per_pair(proc_sys: Path) -> None:
    kr = adapter(FakeNft(), proc_sys)
    kr.start([P1, P2])
    counters = kr.counters()
    assert counters[P1].a == LegCounter(5, 668) and counters[P1].b == LegCounter(4, 548)
    assert counters[P1].packets == 9 and counters[P1].bytes == 1216
    assert counters[P2].packets == 0  # not in the kernel's answer


def test_stop_deletes_our_table(proc_sys: Path) -> None:
    fake = FakeNft()
    kr = adapter(fake, proc_sys)
    kr.start([P1])
    kr.stop()
    assert fake.transactions()[-1] == render_delete(TABLE)
    assert kr.pairs is None and fake.comment is None
    assert (proc_sys / "net/ipv4/ip_forward").read_text() == "1\n"  # never turned off


def test_nft_errors_carry_stderr(proc_sys: Path) -> None:
    def broken(
        argv: Sequence[str], stdin: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        if argv[1] == "-t":
            return subprocess.CompletedProcess(list(argv), 1, "", "no table")
        return subprocess.CompletedProcess(
            list(argv), 1, "", "Error: Could not process rule: Operation not permitted"
        )

    kr = KernelRelay(RELAY, PORTS, runner=broken, proc_sys=proc_sys)
    with pytest.raises(
        KernelRelayError, match=r"nft -f -: Error: Could not process rule: Operation not permitted"
    ):
        kr.start([P1])

    def slow(
        argv: Sequence[str], stdin: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(list(argv), timeout)

    kr = KernelRelay(RELAY, PORTS, runner=slow, proc_sys=proc_sys, timeout=2)
    with pytest.raises(KernelRelayError, match="timed out after 2 s"):
        kr.stop()


def test_available_says_why_not(proc_sys: Path) -> None:
    assert KernelRelay(RELAY, PORTS, nft="no-such-nft-binary").available() == (
        "no-such-nft-binary not found (Debian: apt-get install nftables)"
    )

    def denied(
        argv: Sequence[str], stdin: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        err = "netlink: Error: cache initialization failed: Operation not permitted"
        return subprocess.CompletedProcess(list(argv), 1, "", err)

    reason = KernelRelay(RELAY, PORTS, runner=denied, proc_sys=proc_sys).available()
    assert reason is not None and "needs CAP_NET_ADMIN" in reason and "not permitted" in reason
    assert adapter(FakeNft(), proc_sys).available() is None
    missing = adapter(FakeNft(), proc_sys / "nowhere").available()
    assert missing is not None and "cannot read" in missing


# -- nft's own check, in a lab namespace -----------------------------------------------------


@pytest.mark.netns
def test_nft_accepts_the_rendered_rulesets() -> None:
    with Lab("wgm") as lab:
        host = lab.add_public_host("nftc")
        table = RelayTable(host.address, range(20000, 20400))
        for mode in Forwarding:
            t = RelayTable(table.relay_ip, table.ports, mode)
            for pairs in ([], [synthetic_pairs(1, 20000)[0]], synthetic_pairs(200, 20000)):
                r = host.run("nft", "-c", "-f", "-", stdin=render_replace(t, pairs), check=False)
                assert r.returncode == 0, r.stderr
        # the check is the kernel's: an update naming an element that is not there fails it
        bad = "table ip wgmesh_relay\ndelete element ip wgmesh_relay twin { 20000 }\n"
        assert host.run("nft", "-c", "-f", "-", stdin=bad, check=False).returncode != 0
        assert "wgmesh_relay" not in host.run("nft", "list", "tables").stdout  # nothing stayed
        # the adapter's own check, as root and as an unprivileged user in that namespace
        check = (
            "from wgmesh.registry.relaynft import KernelRelay as K; "
            f"print(K({str(host.address)!r}, range(40000, 40100)).available())"
        )
        assert host.run(sys.executable, "-c", check).stdout.strip() == "None"
        nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        reason = host.run(*nobody, sys.executable, "-c", check).stdout
        assert "cannot load the relay table (it needs CAP_NET_ADMIN)" in reason, reason


# -- real forwarding -------------------------------------------------------------------------

PA, PB = 40000, 40001
RELAY_PORTS = range(40000, 40100)
WG_A, WG_B = 51820, 51821


@contextmanager
def lab_for_test() -> Iterator[Lab]:
    with Lab("wgm") as lab:
        try:
            yield lab
        except BaseException:
            print(lab.logs())
            for host in lab.hosts:
                if host.name == "relay":
                    print(host.run("nft", "list", "ruleset", check=False).stdout)
            raise


def wait_ping(host: Host, address: str, timeout: float = 15.0) -> None:
    wait_until(f"a ping from {host.name} to {address}",
               lambda: host.ping(address, timeout=0.5), timeout, step=0)  # fmt: skip


def is_datagram(source: Endpoint, data: bytes) -> Callable[[Seen], bool]:
    return lambda s: s.source == source and s.data == data


class RelayedPeers:
    """A relay host, peer a behind a port-restricted NAT and peer b behind a symmetric one,
    wireguard-go on both, each pointed at its relay port; the pair not installed yet."""

    def __init__(self, lab: Lab) -> None:
        self.relay = lab.add_public_host("relay")
        self.na = lab.add_nat("na", RouterKind.PORT_RESTRICTED)
        self.nb = lab.add_nat("nb", RouterKind.SYMMETRIC)
        self.a = lab.add_peer("a", self.na)
        self.b = lab.add_peer("b", self.nb)
        self.wa = self.a.start_wireguard(listen_port=WG_A, address="100.64.0.1/24")
        self.wb = self.b.start_wireguard(listen_port=WG_B, address="100.64.0.2/24")
        self.sockets = RelaySockets(self.relay, [PA, PB])
        self.kernel = KernelRelayProcess(self.relay, RELAY_PORTS)

    def port(self, p: int) -> Endpoint:
        return Endpoint.of(self.relay.address, p)

    def learn(self) -> RelayPair:
        """Both bound mappings, learnt from a probe sent from each WireGuard port."""
        ma = learn_mapping(self.a, WG_A, self.sockets, self.port(PA))
        mb = learn_mapping(self.b, WG_B, self.sockets, self.port(PB))
        return RelayPair(RelayLeg(PA, ma), RelayLeg(PB, mb))

    def link(self) -> None:
        self.wa.add_peer(self.wb.public_key, "100.64.0.2/32", str(self.port(PA)), keepalive=25)
        self.wb.add_peer(self.wa.public_key, "100.64.0.1/32", str(self.port(PB)), keepalive=25)

    def pings_both_ways(self, timeout: float = 15.0) -> None:
        wait_ping(self.a, self.wb.tunnel_address, timeout)
        wait_ping(self.b, self.wa.tunnel_address, timeout)

    def blocked(self) -> bool:
        """Neither side gets a ping through (two tries each)."""
        return not self.a.ping(self.wb.tunnel_address, count=2, timeout=0.5) and not self.b.ping(
            self.wa.tunnel_address, count=2, timeout=0.5
        )


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_relay_forwards_bound_wireguard_and_nothing_else() -> None:
    with lab_for_test() as lab:
        net = RelayedPeers(lab)
        x = lab.add_peer("x", None)  # a public host that never bound anything
        root_ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()  # only read
        assert net.kernel.call("available") is None
        net.kernel.call("start")
        assert net.relay.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
        assert net.kernel.call("info")["enabled_ip_forward"] is True
        relayed = net.learn()
        assert relayed.a.peer == Endpoint.of(net.na.wan_ip, WG_A)  # port-preserving
        assert relayed.b.peer.ip == net.nb.wan_ip  # a random port: symmetric
        net.kernel.call("set", [relayed])
        net.link()
        net.pings_both_ways()

        # WireGuard sees the relay, not the peers
        assert net.wa.endpoint_of(net.wb.public_key) == f"{net.relay.address}:{PA}"
        assert net.wb.endpoint_of(net.wa.public_key) == f"{net.relay.address}:{PB}"
        a_sent, b_sent = net.kernel.counters()[relayed]
        assert a_sent > 0 and b_sent > 0

        # what reaches b's WireGuard port, counted there
        watch = PortWatch(net.b, WG_B, {"stun": stun_probe(bytes(12))[4:8], "marker": b"wgm1"})
        marker = wireguard_like(b"wgm1")
        unbound = [
            (net.a, 40000, Endpoint.of(net.na.wan_ip, 40000)),  # bound address, another port
            (x, WG_A, Endpoint.of(x.address, WG_A)),  # another address, the bound port
        ]
        for host, port, source in unbound:
            send_from_port(host, port, net.port(PA), marker)
            net.sockets.wait_for(f"{source}'s datagram at the socket", is_datagram(source, marker))
        txid = os.urandom(12)
        send_from_port(net.a, WG_A, net.port(PA), stun_probe(txid))  # a bind from the bound source
        net.sockets.wait_for(
            "the bind at the socket",
            lambda s: s.source == relayed.a.peer and s.data.endswith(txid),
        )
        time.sleep(0.5)  # anything forwarded would have crossed by now
        assert watch.count("marker") == 0 and watch.count("stun") == 0

        # the same datagram from the bound source is forwarded, and not seen by the sockets
        send_from_port(net.a, WG_A, net.port(PA), marker)
        wait_until("the bound marker at b", lambda: watch.count("marker") == 1, 5)
        from_a = [s for s in net.sockets.seen() if s.source == relayed.a.peer and s.data == marker]
        assert from_a == []

        # stateless: the relay namespace never tracked a connection
        out = net.relay.run("conntrack", "-L", check=False)
        assert "0 flow entries" in out.stderr, out.stdout
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == root_ip_forward


@pytest.mark.netns
@pytest.mark.timeout(150)
def test_relay_outlives_its_process_follows_a_rebind_and_stops_cleanly() -> None:
    with lab_for_test() as lab:
        net = RelayedPeers(lab)
        decoys = "table ip wgmlab_keep {\nchain c {\ntype filter hook input priority 10;\n}\n}\n"
        decoys += "table inet wgmesh_relay {\n}\n"  # our name in another family: not ours
        net.relay.run("nft", "-f", "-", stdin=decoys)
        net.kernel.call("start")
        relayed = net.learn()
        net.kernel.call("set", [relayed])
        net.link()
        net.pings_both_ways()

        # kill -9: no stop(), the table stays and keeps forwarding
        net.kernel.kill()
        assert net.relay.run("nft", "list", "table", "ip", "wgmesh_relay").returncode == 0
        net.pings_both_ways(timeout=5)

        # a new process reconciles to the same pairs while a ping runs: nothing is lost
        log = lab.workdir / "ping-restart.log"
        pinger = net.a.spawn("ping", "-n", "-c", "100", "-i", "0.05", "-W", "1",
                             net.wb.tunnel_address, log_path=log)  # fmt: skip
        time.sleep(1.0)
        restarted = KernelRelayProcess(net.relay, RELAY_PORTS)
        restarted.call("start")  # keeps the table; then the restored state, as relayserve does
        restarted.call("set", [relayed])
        assert pinger.poll() is None, "the restart did not happen while the ping ran"
        pinger.wait(20)
        received = re.search(r"(\d+) received", log.read_text())
        assert received is not None and int(received.group(1)) == 100, log.read_text()
        info = restarted.call("info")
        assert info["forwarding"] == "relay-only"  # remembered: ip_forward was ours to turn on
        assert all(n > 0 for n in restarted.counters()[relayed])  # the new table counts

        # b's NAT gives WireGuard a new mapping: the flow stops until it is bound again
        assert net.nb.rebind() == REBIND_RANGES[0]
        assert net.blocked()
        rebound = net.learn()
        assert rebound.b.peer != relayed.b.peer and rebound.a == relayed.a
        low, high = map(int, REBIND_RANGES[0].split("-"))
        assert low <= rebound.b.peer.port <= high
        restarted.call("set", [rebound])
        net.pings_both_ways()
        assert restarted.call("info")["replacements"] == 1  # the rebind was an update
        assert rebound in restarted.counters()

        # stop removes our table and only ours; forwarding ends
        restarted.call("stop")
        tables = net.relay.run("nft", "list", "tables").stdout.splitlines()
        assert sorted(tables) == ["table inet wgmesh_relay", "table ip wgmlab_keep"]
        assert net.blocked()
