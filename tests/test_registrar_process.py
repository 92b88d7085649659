"""The real `wgmesh registrar` on loopback, checked with dig, third-party STUN clients,
forged/replayed registrations, and kill -9 + restart."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from pathlib import Path

import aiostun
import pytest

from tests.procs import Client, dig, registrar
from wgmesh.proto.endpoint import Endpoint
from wgmesh.proto.keys import encode_key, key_label


def test_records_layout_via_dig(tmp_path: Path) -> None:
    with registrar(tmp_path) as r:
        alice = Client(r.key)
        lan = Endpoint.parse("10.1.0.5:51820")
        alice.register(r.endpoint, name="alice", addresses=(lan,))
        label = key_label(alice.key)
        name = f"{label}._wireguard._udp.mesh.test."
        soa = dig(r.dns_port, "mesh.test", "SOA")
        assert "flags: qr aa" in soa and "status: NOERROR" in soa
        ptr = dig(r.dns_port, "+short", "_wireguard._udp.mesh.test", "PTR")
        assert ptr.split() == [name]
        srv = dig(r.dns_port, "+noall", "+answer", name, "SRV")
        lines = [ln.split() for ln in srv.splitlines() if "SRV" in ln]
        assert lines == [lines[0]] and lines[0][4:] == ["0", "0", str(alice.port), name]
        alt = dig(r.dns_port, "+short", f"_alt.{name}", "SRV")  # the other candidates
        assert alt.split()[2:] == ["51820", f"lan1.{name}"]
        a = dig(r.dns_port, "+short", name, "A")
        assert a.split() == ["127.0.0.1"]
        txt = dig(r.dns_port, "+short", name, "TXT")
        assert '"txtvers=1"' in txt and f'"pub={encode_key(alice.key)}"' in txt
        assert '"name=alice"' in txt
        refused = dig(r.dns_port, "example.org", "A")
        assert "status: REFUSED" in refused
        nx = dig(r.dns_port, f"{'a' * 56}._wireguard._udp.mesh.test", "SRV")
        assert "status: NXDOMAIN" in nx and "SOA" in nx
        alice.close()


def test_truncated_browse_is_completed_over_tcp(tmp_path: Path) -> None:
    # 60 registrations from one address: lift the per-source limit for this test
    with registrar(tmp_path, ["--open", "--rate", "10000", "--burst", "10000"]) as r:
        clients = [Client(r.key) for _ in range(60)]
        for i, c in enumerate(clients):
            c.register(r.endpoint, name=f"p{i}")
        udp_only = dig(r.dns_port, "+ignore", "+bufsize=1232", "_wireguard._udp.mesh.test", "PTR")
        assert " tc" in udp_only.split("flags:")[1].split(";")[0]
        full = dig(
            r.dns_port, "+bufsize=1232", "+noall", "+answer", "_wireguard._udp.mesh.test", "PTR"
        )
        assert len([ln for ln in full.splitlines() if "PTR" in ln]) == 60
        for c in clients:
            c.close()


def test_aiostun_gets_its_mapped_address(tmp_path: Path) -> None:
    with registrar(tmp_path) as r:

        async def ask() -> dict[str, object]:
            async with aiostun.Client("127.0.0.1", port=r.stun_port, timeout=2) as c:
                result: dict[str, object] = await c.get_mapped_address()
                return result

        mapped = asyncio.run(ask())
        assert mapped["ip"] == "127.0.0.1"
        assert isinstance(mapped["port"], int) and mapped["port"] > 0


def test_turnutils_stunclient_gets_its_mapped_address(tmp_path: Path) -> None:
    with registrar(tmp_path) as r:
        out = subprocess.run(
            ["turnutils_stunclient", "-p", str(r.stun_port), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        text = out.stdout + out.stderr
        assert "UDP reflexive addr: 127.0.0.1:" in text, text


def test_replay_and_forgery_rejected_by_the_running_server(tmp_path: Path) -> None:
    with registrar(tmp_path) as r:
        alice = Client(r.key)
        sent = alice.register(r.endpoint, name="alice")
        other = Client(r.key)
        other.sock.sendto(sent, r.endpoint.sockaddr())  # replay from another address
        with pytest.raises(TimeoutError):
            other.sock.settimeout(0.5)
            other.sock.recvfrom(2048)
        time.sleep(0.3)
        srv = dig(r.dns_port, "+short", f"{key_label(alice.key)}._wireguard._udp.mesh.test", "SRV")
        assert srv.split()[2] == str(alice.port)
        alice.close()
        other.close()


def test_an_acknowledged_registration_survives_kill_9_at_once(tmp_path: Path) -> None:
    """No sleep between the Status (the acknowledgement) and kill -9: the record is on disk."""
    with registrar(tmp_path) as r:
        alice = Client(r.key)
        alice.register(r.endpoint, name="alice")  # returns once the Status came back
        r.kill()
        r.start()
        name = f"{key_label(alice.key)}._wireguard._udp.mesh.test"
        assert dig(r.dns_port, "+short", name, "SRV").split()[2] == str(alice.port)
        alice.close()


def test_kill_9_and_restart_serves_records_at_once(tmp_path: Path) -> None:
    with registrar(tmp_path) as r:
        alice = Client(r.key)
        alice.register(r.endpoint, name="alice")
        name = f"{key_label(alice.key)}._wireguard._udp.mesh.test"
        time.sleep(0.6)  # one flush interval and then some
        serial_before = dig(r.dns_port, "+short", "mesh.test", "SOA").split()[2]
        r.kill()
        r.start()
        srv = dig(r.dns_port, "+short", name, "SRV")
        assert srv.split()[2] == str(alice.port)
        serial_after = dig(r.dns_port, "+short", "mesh.test", "SOA").split()[2]
        assert int(serial_after) == int(serial_before) + 1  # grows, by one, not by the peers
        r.kill()  # a second restart with nothing changed in between: it grows again
        r.start()
        assert (
            int(dig(r.dns_port, "+short", "mesh.test", "SOA").split()[2]) == int(serial_after) + 1
        )
        alice.close()


def test_a_refresh_replayed_after_kill_9_is_refused_by_the_journal(tmp_path: Path) -> None:
    """A refresh is written to the refresh journal, not to its row; after kill -9 and a
    restart the journal still raises the peer's floor, so the captured refresh replayed from
    the attacker's address does not move the published endpoint there. The restart folds the
    journal into the table and deletes it."""
    with registrar(tmp_path) as r:
        alice = Client(r.key)
        alice.register(r.endpoint, name="alice")
        captured = alice.register(r.endpoint, name="alice")  # a refresh
        time.sleep(0.6)  # one flush interval and then some
        db = sqlite3.connect(tmp_path / "state" / "registrar.sqlite3")
        (stored,) = db.execute("SELECT register_counter FROM peers").fetchone()
        db.close()
        assert stored < alice.counter - 1  # the refresh's counter is in the journal only
        before = sorted((tmp_path / "state").glob("refresh-*.log"))
        assert before and before[-1].stat().st_size > 0
        r.kill()
        r.start()
        attacker = Client(r.key)
        attacker.sock.sendto(captured, r.endpoint.sockaddr())
        time.sleep(0.5)
        srv = dig(r.dns_port, "+short", f"{key_label(alice.key)}._wireguard._udp.mesh.test", "SRV")
        assert srv.split()[2] == str(alice.port)
        deadline = time.monotonic() + 5
        while set(before) & set((tmp_path / "state").glob("refresh-*.log")):
            assert time.monotonic() < deadline, "the journals were not folded after the restart"
            time.sleep(0.1)
        db = sqlite3.connect(tmp_path / "state" / "registrar.sqlite3")
        (folded,) = db.execute("SELECT register_counter FROM peers").fetchone()
        db.close()
        assert folded == alice.counter - 1
        alice.close()
        attacker.close()


def test_a_damaged_stored_peer_is_left_out_and_reported_at_restart(tmp_path: Path) -> None:
    """A row of the state database damaged while the registrar was down (``since`` made
    infinite, or the mapping text garbled) costs that peer, not the restart: the others are
    served at once, and the log says how many were left out."""
    with registrar(tmp_path) as r:
        alice, bob, carol = Client(r.key), Client(r.key), Client(r.key)
        for c, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
            c.register(r.endpoint, name=name)
        time.sleep(0.6)  # one flush interval and then some
        r.kill()
        db = sqlite3.connect(tmp_path / "state" / "registrar.sqlite3")
        db.execute("UPDATE peers SET since = 9e999 WHERE key = ?", (bob.key,))
        db.execute("UPDATE peers SET endpoint = 'nonsense' WHERE key = ?", (carol.key,))
        db.commit()
        db.close()
        r.start()
        srv = dig(r.dns_port, "+short", f"{key_label(alice.key)}._wireguard._udp.mesh.test", "SRV")
        assert srv.split()[2] == str(alice.port)
        for gone in (bob, carol):
            name = f"{key_label(gone.key)}._wireguard._udp.mesh.test"
            assert dig(r.dns_port, "+short", name, "SRV") == ""
        assert "2 stored peers did not read" in r.log.read_text()
        for c in (alice, bob, carol):
            c.close()


def test_expired_records_are_withdrawn_on_time_and_stay_withdrawn(tmp_path: Path) -> None:
    with registrar(tmp_path, ["--open", "--expiry", "1"]) as r:
        alice = Client(r.key)
        alice.register(r.endpoint, name="alice")
        registered = time.monotonic()
        name = f"{key_label(alice.key)}._wireguard._udp.mesh.test"
        assert dig(r.dns_port, "+short", name, "SRV").split()[2] == str(alice.port)
        time.sleep(max(0.0, registered + 0.7 - time.monotonic()))
        assert "status: NOERROR" in dig(r.dns_port, name, "SRV")  # not yet
        time.sleep(max(0.0, registered + 1.4 - time.monotonic()))
        assert "status: NXDOMAIN" in dig(r.dns_port, name, "SRV")
        assert "withdrawn" in r.log.read_text()
        time.sleep(0.4)  # the withdrawal's flush
        r.kill()
        r.args[r.args.index("--expiry") + 1] = "60"  # the stored row would be live again
        r.start()
        assert "status: NXDOMAIN" in dig(r.dns_port, name, "SRV")
        alice.close()


def test_refuses_to_start_without_an_admission_policy(tmp_path: Path) -> None:
    from tests.procs import RegistrarProcess

    r = RegistrarProcess(tmp_path, extra=[])
    out = subprocess.run(r.args, capture_output=True, text=True, timeout=20)
    assert out.returncode == 2  # a configuration error (docs/cli.md, Exit status)
    assert "--authorized-keys FILE" in out.stderr and "--open" in out.stderr


def test_sighup_reloads_admission_without_dropping_records(tmp_path: Path) -> None:
    import signal

    from nacl.public import PrivateKey

    alice_key, bob_key = PrivateKey.generate(), PrivateKey.generate()
    keys = tmp_path / "authorized_keys"
    alice_line = f"{encode_key(bytes(alice_key.public_key))} alice 100.64.0.1/32\n"
    keys.write_text(alice_line)
    with registrar(tmp_path, ["--authorized-keys", str(keys)]) as r:
        assert r.proc is not None
        alice, bob = Client(r.key, alice_key), Client(r.key, bob_key)
        alice.register(r.endpoint)
        bob.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            bob.register(r.endpoint)  # not admitted: no answer
        alice_name = f"{key_label(alice.key)}._wireguard._udp.mesh.test"
        # a broken file is reported and the old list stays
        keys.write_text(alice_line + "not a key\n")
        r.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert "reload failed" in r.log.read_text()
        assert dig(r.dns_port, "+short", alice_name, "TXT")
        # a good file admits bob and keeps alice's live record
        keys.write_text(alice_line + f"{encode_key(bob.key)} bob 100.64.0.2/32\n")
        r.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        bob.sock.settimeout(2)
        bob.register(r.endpoint)
        assert '"allowed=100.64.0.2/32"' in dig(
            r.dns_port, "+short", f"{key_label(bob.key)}._wireguard._udp.mesh.test", "TXT"
        )
        assert '"allowed=100.64.0.1/32"' in dig(r.dns_port, "+short", alice_name, "TXT")
        alice.close()
        bob.close()


def test_rfc3489_stun_client_gets_its_mapped_address(tmp_path: Path) -> None:
    """Debian's `stun` (stund 0.97) speaks RFC 3489: no magic cookie, MAPPED-ADDRESS."""
    with registrar(tmp_path) as r:
        out = subprocess.run(
            ["stun", f"127.0.0.1:{r.stun_port}", "-v"], capture_output=True, text=True, timeout=30
        )
        assert "MappedAddress = 127.0.0.1:" in out.stdout + out.stderr
