"""The whole registrar process at scale (issue 14, item 4): N peers registered and refreshing at
their probe interval through the real UDP sockets, DNS asked at a realistic rate; the CPU share,
RSS per peer and p99 latency of a registration and of a DNS answer, and how each grows with N.

Everything runs in a private network namespace (the script re-runs itself under ``unshare
--net``: loopback only, and whatever is bound there vanishes with it). For each size, a fresh
``wgmesh registrar --open`` (temporary state dir and key, uvloop when installed, as the CLI runs
it) pinned to one CPU, and a load generator written in C (GENERATOR_C below, compiled here with
gcc against the system's libsodium) pinned to the other.
Peer p is a daemon at 127.(16 + p/65536).(p/256 % 256).(p % 256): WireGuard port 51820 (sealed
Registers), control socket 51821 (sealed Watches), resolver 51822 (DNS); the generator sends
from three sockets, setting each datagram's source address (IP_PKTINFO). Python cannot seal
tens of thousands of messages a second, so the generator seals them as it sends, with each
peer's shared key computed beforehand (two X25519 per peer; timed and printed).

N peers at 20 s are N/20 probe rounds a second (1M: 50,000 Registers + 50,000 Watches + 50,000
queries a second), far more than one core of this 2-vCPU machine handles, so at most
--max-rounds rounds/s are offered (500: 10k peers at 20 s). Peers 0..A-1, A = min(N, max_rounds
x interval), are live; for N > A the other N - A are written to the registrar's own database
beforehand and restored at its start-up (timed), as after a restart: registered, published and
asked about, not refreshing. So every size is measured at the same message rate (the growth
columns then show what N itself costs), and the CPU share at N/20 is projected from the
measured CPU per round. --max-rounds 5000 runs 100k peers at the real rate.

1. RSS with 0 peers (a registrar started empty), then the fill: each live peer's first probe
   round (Register, then Watch; at most 48 peers waiting for their Status), timed.
2. The steady state: each live peer does what the daemon does every probe interval
   (--interval, 20 s): a Register and a Watch for it (cookie echoed, so it is a push target;
   an unproven Status is answered at once with a Watch echoing the cookie, as the daemon
   does), in a fixed random order spread evenly over the interval; and SRV queries for random
   registered peers, one per live peer per interval (--dns-per-peer), each from a random live
   peer's address. One interval of warm-up (cookies proven, answer cache warm) is not counted,
   then --seconds are.
3. Over the counted window: the registrar's CPU share (/proc/PID/stat, all threads) and the
   share of time it waited for its CPU (/proc/PID/schedstat: other work on the machine), its
   CPU per round (Register + Watch + query), the p50/p99 of Register+Watch -> Status (the
   registration's round trip; a Register is never answered) and of query -> answer, each over
   everything sent (unanswered counts as infinitely late: "inf" means over 1% went
   unanswered); RSS per peer = (VmRSS at the end - VmRSS with 0 peers) / N. Every answer is
   checked (the Status opens with the peer's key, answers its last Watch, names its last
   Register and the Register's source; the DNS answer is NOERROR for the question asked, with
   an SRV of port 51820 and an A of the peer's address), and the registrar's counters (its
   metrics endpoint) and the kernel's drop counts at its sockets are read before and after.

The registrar runs with two settings changed, printed: --expiry 3600 (with the default 50 s, a
peer filled or restored early would expire before its first refresh; the refreshes themselves
come every 20 s), and its cap on X25519 steps for unknown keys (2,000/s, no flag) raised for the
fill (--stock-x25519-limit keeps it). Targets (issues 6, 14): the registrar keeps up with N
peers at 20 s on less than one core; <= 1 KiB/peer; at 1M, registration and DNS p99 <= 5 ms
with at most one core busy.

    python bench/registrar_scale.py                     # 10k, 100k, 1M: about 6 minutes
    python bench/registrar_scale.py --quick             # 10k only, about a minute
    python bench/registrar_scale.py --peers 100000 --max-rounds 5000   # 100k at 20 s
    python bench/registrar_scale.py --quick --state-in /dev/shm        # state on tmpfs

Bounded: each load phase lasts --warm-up + --seconds (+2 s of draining), each fill at most 5
tries per peer and 15 s without an answer; every process is ended by its PID, also on failure.
Needs root (a network namespace), gcc, taskset, iproute2 and libsodium (Debian: libsodium23).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

NETNS_MARK = "WGMESH_SCALE_NETNS"
STUN_PORT, DNS_PORT, METRICS_PORT = 3478, 5300, 9108
METRICS = f"http://127.0.0.1:{METRICS_PORT}/metrics"
PREFIX = "wgmesh_registrar_"
KIB_TARGET = 1.0
P99_TARGET_MS = 5.0

GENERATOR_C = r"""/* Peer load for bench/registrar_scale.py: N daemons' registrar traffic from one process.

   gen keys --peers N --active A --registrar HEX --out FILE [--threads T]
       N peers; FILE holds N records of 64 bytes (public key, shared key). Peers 0..A-1 send
       messages: a random private key each, its public key and its crypto_box shared key with
       the registrar (two X25519). The others are only registered and asked about: a random
       32-byte key, no shared key.
   gen dump --keys FILE
       Peer 0's Register (counter 1000) and Watch (counter 1001) and an SRV query for it, in
       hex, for the Python side to check with wgmesh's own decoders.
   gen fill --keys FILE --peers N --port P [--window W]
       First contact of peers 0..N-1: Register then Watch (as a daemon's probe round), at most
       W peers (48: their 96 datagrams fit the registrar's default receive buffer) waiting
       for their Status; a Status must name the Register just sent and the Register's
       source as the observed mapping. 5 tries per peer, 1 s apart; gives up after 15 s
       without an answer.
   gen steady --keys FILE --peers N --active A --port P --dns-port D --interval I --seconds S
              [--warmup W] [--watch-share F] [--dns-per-peer Q]
       Peers 0..A-1 (in a random order, the same every interval) each send a Register every I s,
       spread evenly; a share F of them follow it with a Watch (cookie echoed: a push target,
       as a daemon is) and an unproven Status is answered at once with a Watch echoing its
       cookie, as the daemon does. SRV queries for random registered peers at A*Q/I per second,
       each from a random active peer's address. Latencies: Watch sent -> its Status, query
       sent -> its answer; every answer checked (Status: the box opens with the peer's key, it
       answers the last Watch, names the last Register and the Register's source; DNS: NOERROR,
       the question asked, an SRV with priority 0 and port 51820, an A of the peer's address).
       The first W seconds (--warmup) are not counted: "phase=measure" is printed when the
       counted window starts and "phase=drain" when it ends (2 s of draining answers follow).

   Peer p's WireGuard socket is 127.(16 + p/65536).(p/256%256).(p%256):51820, its control
   socket the same address port 51821, its resolver port 51822: every datagram leaves one of
   three sockets bound to 0.0.0.0 (the caller runs this in a private network namespace) with
   its source address set per datagram (IP_PKTINFO). Prints key=value lines. Bounded: --seconds
   at most 3600, a fill gives up on a peer after 5 tries. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* libsodium (Debian's libsodium23), declared here: the runtime library is enough */
int sodium_init(void);
void randombytes_buf(void *buf, size_t size);
int crypto_scalarmult_base(unsigned char *q, const unsigned char *n);
int crypto_box_beforenm(unsigned char *k, const unsigned char *pk, const unsigned char *sk);
int crypto_box_easy_afternm(unsigned char *c, const unsigned char *m, unsigned long long mlen,
                            const unsigned char *n, const unsigned char *k);
int crypto_box_open_easy_afternm(unsigned char *m, const unsigned char *c,
                                 unsigned long long clen, const unsigned char *n,
                                 const unsigned char *k);

#define COOKIE 0x2112A442u
#define WG_PORT 51820
#define CTL_PORT 51821
#define DNS_SRC_PORT 51822
#define BATCH 64
#define PKT 1500
#define MAX_PEERS 4000000u
#define ZONE_TAIL "\012_wireguard\004_udp\004mesh\004test"

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) << 32 | rd32(p + 4); }
static void wr16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xFF; }
static void wr32(uint8_t *p, uint32_t v) { wr16(p, v >> 16); wr16(p + 2, v & 0xFFFF); }
static void wr64(uint8_t *p, uint64_t v) { wr32(p, v >> 32); wr32(p + 4, (uint32_t)v); }

static double clock_of(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double mono(void) { return clock_of(CLOCK_MONOTONIC); }
static double wall(void) { return clock_of(CLOCK_REALTIME); }

static uint64_t rng_s[2];
static uint64_t rng(void) { /* xorshift128+: peer and query choice only, not key material */
    uint64_t a = rng_s[0], b = rng_s[1];
    rng_s[0] = b;
    a ^= a << 23;
    rng_s[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
    return rng_s[1] + b;
}

static uint32_t crc_table[256];
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}
static uint32_t crc32(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n--) c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static uint32_t peer_ip(uint32_t p) { return 127u << 24 | (16u + (p >> 16)) << 16 | (p & 0xFFFF); }
static int64_t peer_of(uint32_t ip) {
    uint32_t b = (ip >> 16) & 255;
    if (ip >> 24 != 127 || b < 16) return -1;
    return (int64_t)(b - 16) << 16 | (ip & 0xFFFF);
}

/* -- peers ------------------------------------------------------------------------------ */

struct peer {
    uint64_t counter;  /* last counter used (microseconds of wall time, strictly increasing) */
    uint64_t reg;      /* counter of the last Register */
    uint64_t watch;    /* counter of the last Watch */
    double sent;       /* when the last Watch left (monotonic) */
    uint8_t cookie[16];
    uint8_t waiting;   /* a Watch is unanswered: 1 sent in the warm-up, 2 counted */
    uint8_t tries;
};
static uint32_t npeers, keyed;
static uint8_t *keys; /* npeers x (public key, shared key) */
static struct peer *peers;

static uint64_t next_counter(struct peer *pe) {
    uint64_t us = (uint64_t)(wall() * 1e6);
    pe->counter = pe->counter + 1 > us ? pe->counter + 1 : us;
    return pe->counter;
}

static struct {
    long long registers, watches, ok, wrong, behind, stale, lost, proven, unproven, pushes, other;
    long long dns_sent, dns_ok, dns_wrong, dns_tc, dns_rcode, dns_lost, dns_stale;
    long long send_errors, retries, failed;
} st;
static char first_wrong[256];
static int counting = 1; /* 0 during a warm-up: what is sent then is not counted */

struct lat { float *v; size_t n, cap; };
static struct lat lat_status, lat_dns;
static void lat_add(struct lat *l, double seconds) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 65536;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v) { perror("gen: realloc"); exit(2); }
    }
    l->v[l->n++] = (float)(seconds * 1e6);
}
static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}
/* Percentiles over the answered and the unanswered (`lost`, counted as infinitely late). */
static void lat_print(const char *name, struct lat *l, long long lost) {
    for (long long i = 0; i < lost; i++) lat_add(l, INFINITY);
    qsort(l->v, l->n, sizeof *l->v, cmp_float);
    const double qs[] = {0.5, 0.9, 0.99, 0.999};
    const char *qn[] = {"p50", "p90", "p99", "p999"};
    printf("%s_samples=%zu\n", name, l->n - (size_t)lost);
    for (int i = 0; i < 4; i++)
        printf("%s_%s_us=%.1f\n", name, qn[i], l->n ? l->v[(size_t)(qs[i] * (l->n - 1))] : 0.0);
    printf("%s_max_us=%.1f\n", name, l->n ? l->v[l->n - 1] : 0.0);
}

/* -- messages --------------------------------------------------------------------------- */

/* A sealed Register (kind 1) or Watch (kind 2) of peer p, as wgmesh.proto.sealed lays it out,
   in a STUN Binding Request with WG-PUBLIC-KEY, WG-SEALED and FINGERPRINT. */
static size_t build(uint8_t *out, uint32_t p, int kind, uint64_t counter, uint64_t reg,
                    const uint8_t cookie[16]) {
    uint8_t rnd[36], pt[128];
    randombytes_buf(rnd, sizeof rnd);
    const uint8_t *tid = rnd, *nonce = rnd + 12;
    size_t n = 0;
    pt[n++] = 1;
    pt[n++] = (uint8_t)kind;
    memcpy(pt + n, tid, 12);
    n += 12;
    wr64(pt + n, (uint64_t)(wall() * 1000));
    wr64(pt + n + 8, counter);
    n += 16;
    if (kind == 1) {
        pt[n++] = 0; /* flags: not secondary */
        pt[n++] = 8;
        snprintf((char *)pt + n, 9, "p%07u", p % 10000000u);
        n += 8;
        pt[n++] = 12;
        memcpy(pt + n, "wgmesh/bench", 12);
        n += 12;
        pt[n++] = 1; /* one LAN address: 10.x.y.z:51820 */
        pt[n++] = 4;
        wr32(pt + n, 10u << 24 | (p & 0xFFFFFF));
        wr16(pt + n + 4, WG_PORT);
        n += 6;
    } else {
        wr64(pt + n, reg);
        memcpy(pt + n + 8, cookie, 16);
        n += 24;
        pt[n++] = 0xFF; /* every peer's changes, then zeros to WATCH_MIN (112), as daemons pad */
        memset(pt + n, 0, 112 - n);
        n = 112;
    }
    size_t box = 24 + 16 + n, pad = (4 - box % 4) % 4;
    size_t len = 20 + 36 + 4 + box + pad + 8;
    wr16(out, 0x0001);
    wr16(out + 2, (uint16_t)(len - 20));
    wr32(out + 4, COOKIE);
    memcpy(out + 8, tid, 12);
    uint8_t *a = out + 20;
    wr16(a, 0xC0A1);
    wr16(a + 2, 32);
    memcpy(a + 4, keys + 64 * (size_t)p, 32);
    a += 36;
    wr16(a, 0xC0A2);
    wr16(a + 2, (uint16_t)box);
    memcpy(a + 4, nonce, 24);
    crypto_box_easy_afternm(a + 28, pt, n, nonce, keys + 64 * (size_t)p + 32);
    memset(a + 4 + box, 0, pad);
    a += 4 + box + pad;
    wr16(a, 0x8028);
    wr16(a + 2, 4);
    wr32(a + 4, crc32(out, (size_t)(a - out)) ^ 0x5354554Eu);
    return len;
}

static const char B32[] = "abcdefghijklmnopqrstuvwxyz234567";

/* <label>._wireguard._udp.mesh.test in wire format (label: padded lowercase base32). */
static size_t qname_of(uint8_t *out, uint32_t p) {
    const uint8_t *k = keys + 64 * (size_t)p;
    out[0] = 56;
    size_t o = 1;
    uint32_t acc = 0;
    int bits = 0;
    for (int i = 0; i < 32; i++) {
        acc = acc << 8 | k[i];
        bits += 8;
        while (bits >= 5) {
            out[o++] = B32[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    out[o++] = B32[(acc << (5 - bits)) & 31]; /* 256 bits: 51 full groups and 1 bit */
    while (o < 57) out[o++] = '=';
    memcpy(out + o, ZONE_TAIL, sizeof ZONE_TAIL); /* with the root's zero byte */
    return o + sizeof ZONE_TAIL;
}

/* An SRV query for peer p with EDNS 1232, as the daemon's resolver asks. */
static size_t build_query(uint8_t *out, uint16_t id, uint32_t p) {
    wr16(out, id);
    wr16(out + 2, 0x0100);
    wr16(out + 4, 1);
    wr16(out + 6, 0);
    wr16(out + 8, 0);
    wr16(out + 10, 1);
    size_t n = 12 + qname_of(out + 12, p);
    wr16(out + n, 33);
    wr16(out + n + 2, 1);
    static const uint8_t opt[11] = {0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0};
    memcpy(out + n + 4, opt, sizeof opt);
    return n + 4 + sizeof opt;
}

/* -- sockets ---------------------------------------------------------------------------- */

struct batch {
    int fd, n;
    struct sockaddr_in dst;
    struct mmsghdr m[BATCH];
    struct iovec iov[BATCH];
    uint8_t buf[BATCH][256];
    union {
        char c[CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct cmsghdr align;
    } ctl[BATCH];
};

static int open_socket(int port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0), big = 8 << 20, one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("gen: bind");
        exit(2);
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
    return fd;
}

static void batch_init(struct batch *b, int fd, int port) {
    memset(b, 0, sizeof *b);
    b->fd = fd;
    b->dst.sin_family = AF_INET;
    b->dst.sin_port = htons(port);
    b->dst.sin_addr.s_addr = htonl(0x7F000001);
}

static void flush(struct batch *b) {
    int off = 0;
    while (off < b->n) {
        int r = sendmmsg(b->fd, b->m + off, b->n - off, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            st.send_errors += b->n - off;
            break;
        }
        off += r;
    }
    b->n = 0;
}

/* The next slot's buffer; commit() sends it from src_ip. */
static uint8_t *slot(struct batch *b) {
    if (b->n == BATCH) flush(b);
    return b->buf[b->n];
}
static void commit(struct batch *b, size_t len, uint32_t src_ip) {
    int i = b->n++;
    b->iov[i].iov_base = b->buf[i];
    b->iov[i].iov_len = len;
    struct msghdr *h = &b->m[i].msg_hdr;
    memset(h, 0, sizeof *h);
    h->msg_name = &b->dst;
    h->msg_namelen = sizeof b->dst;
    h->msg_iov = &b->iov[i];
    h->msg_iovlen = 1;
    h->msg_control = b->ctl[i].c;
    h->msg_controllen = sizeof b->ctl[i].c;
    struct cmsghdr *c = CMSG_FIRSTHDR(h);
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
    struct in_pktinfo *pi = (struct in_pktinfo *)CMSG_DATA(c);
    memset(pi, 0, sizeof *pi);
    pi->ipi_spec_dst.s_addr = htonl(src_ip);
}

static struct batch wg, ctl, dns;

static void send_register(uint32_t p) {
    struct peer *pe = &peers[p];
    pe->reg = next_counter(pe);
    uint8_t *buf = slot(&wg);
    commit(&wg, build(buf, p, 1, pe->reg, 0, NULL), peer_ip(p));
    st.registers++;
}

static void send_watch(uint32_t p, double now) {
    struct peer *pe = &peers[p];
    pe->watch = next_counter(pe);
    uint8_t *buf = slot(&ctl);
    commit(&ctl, build(buf, p, 2, pe->watch, pe->reg, pe->cookie), peer_ip(p));
    pe->sent = now;
    pe->waiting = (uint8_t)(1 + counting);
    st.watches++;
}

static void note_wrong(const char *what, const uint8_t *p, size_t n) {
    if (first_wrong[0]) return;
    size_t o = (size_t)snprintf(first_wrong, sizeof first_wrong, "%s:", what);
    for (size_t i = 0; i < n && o + 3 < sizeof first_wrong; i++)
        o += (size_t)snprintf(first_wrong + o, sizeof first_wrong - o, "%02x", p[i]);
}

/* A datagram on the control socket: a Status (1: answers peer *who's last Watch and is
   right; 4 right but not naming the last Register; 0 stale; -1 wrong), a Push (2) or anything
   else (3). */
static int on_control(const uint8_t *d, size_t n, uint32_t *who, int *proven) {
    if (n < 20 || rd32(d + 4) != COOKIE || rd16(d + 2) + 20u != n) return 3;
    if (rd16(d) == 0x0011) return 2;
    if (rd16(d) != 0x0101) return 3;
    const uint8_t *xor = NULL, *box = NULL;
    size_t boxlen = 0;
    for (size_t pos = 20; pos + 4 <= n;) {
        uint16_t t = rd16(d + pos), l = rd16(d + pos + 2);
        if (pos + 4 + l > n) return -1;
        if (t == 0x0020 && l == 8) xor = d + pos + 4;
        if (t == 0xC0A2) box = d + pos + 4, boxlen = l;
        pos += 4 + ((l + 3u) & ~3u);
    }
    if (!xor || !box || boxlen < 40 || boxlen > 600) return -1;
    uint32_t ip = rd32(xor + 4) ^ COOKIE;
    int64_t p = peer_of(ip);
    if (p < 0 || p >= npeers || (rd16(xor + 2) ^ (COOKIE >> 16)) != CTL_PORT) return -1;
    *who = (uint32_t)p;
    struct peer *pe = &peers[p];
    uint8_t pt[600];
    if (crypto_box_open_easy_afternm(pt, box + 24, boxlen - 24, box,
                                     keys + 64 * (size_t)p + 32) != 0)
        return -1;
    size_t m = boxlen - 40;
    if (m < 47 || pt[0] != 1 || pt[1] != 3 || memcmp(pt + 2, d + 8, 12)) return -1;
    uint64_t watch = rd64(pt + 30), reg = rd64(pt + 38);
    if (watch != pe->watch || !pe->waiting) return 0;
    int count = pt[46];
    size_t pos = 47;
    int mapped_ok = 0;
    for (int i = 0; i < count; i++) {
        if (pos + 1 > m) return -1;
        size_t alen = pt[pos] == 4 ? 7 : 19;
        if (pos + alen > m) return -1;
        if (i == 0 && pt[pos] == 4 && rd32(pt + pos + 1) == peer_ip((uint32_t)p) &&
            rd16(pt + pos + 5) == WG_PORT)
            mapped_ok = 1;
        pos += alen;
    }
    if (pos + 1 + 4 + 1 + 16 != m) return -1;
    *proven = pt[pos + 5] & 1;
    memcpy(pe->cookie, pt + pos + 6, 16);
    if (mapped_ok && reg < pe->reg) return 4; /* our Register was dropped or is not read yet */
    return mapped_ok && reg == pe->reg ? 1 : -1;
}

/* Skip a (possibly compressed) name; 0 when it runs past the end. */
static size_t skip_name(const uint8_t *r, size_t n, size_t pos) {
    while (pos < n) {
        uint8_t b = r[pos];
        if ((b & 0xC0) == 0xC0) return pos + 2 <= n ? pos + 2 : 0;
        if (b == 0) return pos + 1;
        pos += 1 + b;
    }
    return 0;
}

/* An SRV answer for peer `target`: 1 right, -1 wrong, -2 truncated, -3 an error rcode. */
static int check_answer(const uint8_t *r, size_t n, uint32_t target) {
    uint8_t q[128];
    size_t qn = qname_of(q, target);
    if (n < 12 + qn + 4 || !(r[2] & 0x80)) return -1;
    if (r[2] & 0x02) return -2;
    if (r[3] & 0x0F) return -3;
    if (rd16(r + 4) != 1 || memcmp(r + 12, q, qn) || rd16(r + 12 + qn) != 33) return -1;
    int an = rd16(r + 6), ns = rd16(r + 8), ar = rd16(r + 10), srv = 0, addr = 0;
    size_t pos = 12 + qn + 4;
    for (int i = 0; i < an + ns + ar; i++) {
        pos = skip_name(r, n, pos);
        if (!pos || pos + 10 > n) return -1;
        uint16_t type = rd16(r + pos), len = rd16(r + pos + 8);
        const uint8_t *rd = r + pos + 10;
        if (pos + 10 + len > n) return -1;
        if (i < an && type == 33 && len >= 6 && rd16(rd) == 0 && rd16(rd + 4) == WG_PORT) srv = 1;
        if (i >= an + ns && type == 1 && len == 4 && rd32(rd) == peer_ip(target)) addr = 1;
        pos += 10 + len;
    }
    return srv && addr ? 1 : -1;
}

static struct {
    double sent;
    uint32_t target;
    uint8_t busy;
} inflight[65536];

static void drain_dns(double now) {
    static uint8_t buf[BATCH][PKT];
    static struct mmsghdr m[BATCH];
    static struct iovec iov[BATCH];
    for (;;) {
        for (int k = 0; k < BATCH; k++) {
            iov[k].iov_base = buf[k];
            iov[k].iov_len = PKT;
            memset(&m[k].msg_hdr, 0, sizeof m[k].msg_hdr);
            m[k].msg_hdr.msg_iov = &iov[k];
            m[k].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(dns.fd, m, BATCH, MSG_DONTWAIT, NULL);
        if (got <= 0) return;
        for (int k = 0; k < got; k++) {
            size_t len = m[k].msg_len;
            if (len < 12) { st.dns_wrong++; continue; }
            uint16_t id = rd16(buf[k]);
            if (!inflight[id].busy) { st.dns_stale++; continue; }
            int r = check_answer(buf[k], len, inflight[id].target);
            int counted = inflight[id].busy == 2;
            if (r == 1) {
                if (counted) {
                    st.dns_ok++;
                    lat_add(&lat_dns, now - inflight[id].sent);
                }
            } else if (r == -2) st.dns_tc += counted;
            else if (r == -3) st.dns_rcode += counted;
            else {
                st.dns_wrong++;
                note_wrong("dns", buf[k], len);
            }
            inflight[id].busy = 0;
        }
        if (got < BATCH) return;
    }
}

/* Statuses and pushes; `echo`: answer an unproven Status with a Watch echoing its cookie. */
static void drain_control(double now, int echo, long long *done) {
    static uint8_t buf[BATCH][PKT];
    static struct mmsghdr m[BATCH];
    static struct iovec iov[BATCH];
    for (;;) {
        for (int k = 0; k < BATCH; k++) {
            iov[k].iov_base = buf[k];
            iov[k].iov_len = PKT;
            memset(&m[k].msg_hdr, 0, sizeof m[k].msg_hdr);
            m[k].msg_hdr.msg_iov = &iov[k];
            m[k].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(ctl.fd, m, BATCH, MSG_DONTWAIT, NULL);
        if (got <= 0) return;
        for (int k = 0; k < got; k++) {
            uint32_t p = 0;
            int proven = 0, r = on_control(buf[k], m[k].msg_len, &p, &proven);
            int counted = peers[p].waiting == 2;
            if (r == 1) {
                struct peer *pe = &peers[p];
                pe->waiting = 0;
                if (counted) {
                    st.ok++;
                    lat_add(&lat_status, now - pe->sent);
                    if (done) (*done)++;
                    if (proven) st.proven++;
                    else st.unproven++;
                }
                if (!proven && echo) send_watch(p, now);
            } else if (r == 4) {
                st.behind += counted;
                if (!done) peers[p].waiting = 0; /* a fill tries the peer again */
            } else if (r == 0) st.stale++;
            else if (r == 2) st.pushes++;
            else if (r == 3) st.other++;
            else {
                st.wrong++;
                note_wrong("status", buf[k], m[k].msg_len);
            }
        }
        if (got < BATCH) return;
    }
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void load_keys(const char *path) {
    int fd = open(path, O_RDONLY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0 || (size_t)sb.st_size < 64 * (size_t)npeers) {
        fprintf(stderr, "gen: %s holds fewer than %u peers\n", path, npeers);
        exit(2);
    }
    keys = malloc(64 * (size_t)npeers);
    peers = calloc(npeers, sizeof *peers);
    size_t want = 64 * (size_t)npeers, got = 0;
    while (got < want) {
        ssize_t r = read(fd, keys + got, want - got);
        if (r <= 0) { perror("gen: read keys"); exit(2); }
        got += (size_t)r;
    }
    close(fd);
}

/* -- modes ------------------------------------------------------------------------------ */

struct keyjob { uint8_t *out; size_t lo, hi; const uint8_t *reg; };
static void *make_keys(void *arg) {
    struct keyjob *j = arg;
    uint8_t sk[32];
    for (size_t i = j->lo; i < j->hi; i++) {
        if (i >= keyed) { /* registered only: any 32 bytes are a key to the registrar's table */
            randombytes_buf(j->out + 64 * i, 32);
            memset(j->out + 64 * i + 32, 0, 32);
            continue;
        }
        randombytes_buf(sk, 32);
        crypto_scalarmult_base(j->out + 64 * i, sk);
        if (crypto_box_beforenm(j->out + 64 * i + 32, j->reg, sk) != 0) {
            fprintf(stderr, "gen: beforenm failed\n");
            exit(2);
        }
    }
    return NULL;
}

static int mode_keys(const char *reg_hex, const char *out, int threads) {
    uint8_t reg[32];
    for (int i = 0; i < 32; i++)
        if (sscanf(reg_hex + 2 * i, "%2hhx", &reg[i]) != 1) return 2;
    uint8_t *buf = malloc(64 * (size_t)npeers);
    pthread_t t[16];
    struct keyjob jobs[16];
    for (int i = 0; i < threads; i++) {
        jobs[i] = (struct keyjob){buf, npeers * (size_t)i / threads,
                                  npeers * (size_t)(i + 1) / threads, reg};
        pthread_create(&t[i], NULL, make_keys, &jobs[i]);
    }
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    FILE *f = fopen(out, "wb");
    if (!f || fwrite(buf, 64, npeers, f) != npeers || fclose(f) != 0) {
        perror("gen: write keys");
        return 2;
    }
    return 0;
}

static void hex(const char *name, const uint8_t *p, size_t n) {
    printf("%s=", name);
    for (size_t i = 0; i < n; i++) printf("%02x", p[i]);
    printf("\n");
}

static int mode_dump(void) {
    uint8_t buf[256];
    hex("register", buf, build(buf, 0, 1, 1000, 0, NULL));
    uint8_t cookie[16] = {0};
    hex("watch", buf, build(buf, 0, 2, 1001, 1000, cookie));
    hex("query", buf, build_query(buf, 7, 0));
    printf("peer_ip=%u.%u.%u.%u\n", peer_ip(0) >> 24, (peer_ip(0) >> 16) & 255,
           (peer_ip(0) >> 8) & 255, peer_ip(0) & 255);
    return 0;
}

static int mode_fill(int window) {
    uint32_t *out = malloc(sizeof *out * (size_t)window);
    int nout = 0;
    uint32_t next = 0;
    long long done = 0, last_done = 0;
    double t0 = mono(), cpu0 = cpu_seconds(), last_progress = t0;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN}, evs[2];
    epoll_ctl(ep, EPOLL_CTL_ADD, ctl.fd, &ev);
    while (done + st.failed < npeers) {
        double now = mono();
        while (nout < window && next < npeers) {
            uint32_t p = next++;
            send_register(p);
            send_watch(p, now);
            peers[p].tries = 1;
            out[nout++] = p;
        }
        flush(&wg);
        flush(&ctl);
        epoll_wait(ep, evs, 2, 2);
        now = mono();
        drain_control(now, 0, &done);
        { /* answered peers leave the window; late ones are tried again */
            int k = 0;
            for (int i = 0; i < nout; i++) {
                struct peer *pe = &peers[out[i]];
                if (!pe->waiting) continue;
                if (now - pe->sent > 1.0) {
                    if (pe->tries >= 5) {
                        st.failed++;
                        pe->waiting = 0;
                        continue;
                    }
                    pe->tries++;
                    st.retries++;
                    send_register(out[i]);
                    send_watch(out[i], now);
                }
                out[k++] = out[i];
            }
            nout = k;
            flush(&wg);
            flush(&ctl);
        }
        if (done > last_done) last_done = done, last_progress = now;
        if (now - last_progress > 15 || now - t0 > 3600) break; /* no answers: give up */
    }
    double secs = mono() - t0;
    printf("seconds=%.3f\nregistered=%lld\nfailed=%lld\nretries=%lld\nrate=%.0f\n", secs, done,
           st.failed, st.retries, done / secs);
    printf("wrong=%lld\nbehind=%lld\nstale=%lld\ncpu_share=%.3f\n", st.wrong, st.behind, st.stale,
           (cpu_seconds() - cpu0) / secs);
    if (first_wrong[0]) printf("first_wrong=%s\n", first_wrong);
    lat_print("status", &lat_status, st.failed);
    return st.wrong ? 1 : 0;
}

static int mode_steady(uint32_t active, double interval, double warmup, double seconds,
                       double share, double dns_per_peer) {
    uint32_t *perm = malloc(sizeof *perm * (size_t)active);
    for (uint32_t i = 0; i < active; i++) perm[i] = i;
    for (uint32_t i = active - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rng() % (i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    uint32_t share_k = (uint32_t)(share * 1000 + 0.5);
    double dns_rate = active * dns_per_peer / interval;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN}, evs[2];
    epoll_ctl(ep, EPOLL_CTL_ADD, ctl.fd, &ev);
    ev.data.u32 = 1;
    epoll_ctl(ep, EPOLL_CTL_ADD, dns.fd, &ev);
    double t0 = mono(), cpu0 = 0, measure = t0 + warmup, end = measure + seconds;
    counting = 0;
    long long slots = 0, queries = 0;
    int measuring = 0;
    for (double now = t0; now < end + 2.0; now = mono()) {
        if (!measuring && now >= measure) { /* the warm-up round is not counted */
            measuring = counting = 1;
            memset(&st, 0, sizeof st);
            lat_status.n = lat_dns.n = 0;
            cpu0 = cpu_seconds();
            measure = now;
            printf("phase=measure\n");
        }
        if (now < end) {
            long long due = (long long)((now - t0) * active / interval);
            for (int k = 0; slots < due && k < 4096; k++, slots++) {
                uint32_t p = perm[slots % active];
                struct peer *pe = &peers[p];
                st.lost += pe->waiting == 2; /* the last round's Watch never got its Status */
                pe->waiting = 0;
                send_register(p);
                if ((p * 2654435761u) % 1000u < share_k) send_watch(p, now);
            }
            due = (long long)((now - t0) * dns_rate);
            for (int k = 0; queries < due && k < 4096; k++, queries++) {
                uint16_t id = (uint16_t)queries;
                st.dns_lost += inflight[id].busy == 2;
                uint32_t target = (uint32_t)(rng() % npeers);
                uint8_t *b = slot(&dns);
                size_t len = build_query(b, id, target);
                commit(&dns, len, peer_ip(perm[rng() % active]));
                inflight[id] = (typeof(inflight[0])){now, target, (uint8_t)(1 + counting)};
                st.dns_sent++;
            }
            flush(&wg);
            flush(&ctl);
            flush(&dns);
        }
        epoll_wait(ep, evs, 2, 1);
        now = mono();
        drain_control(now, now < end, NULL);
        drain_dns(now);
        flush(&ctl); /* cookie echoes */
        if (measuring == 1 && now >= end) {
            measuring = 2;
            printf("phase=drain\n");
        }
    }
    for (uint32_t p = 0; p < active; p++) st.lost += peers[p].waiting == 2;
    for (int i = 0; i < 65536; i++) st.dns_lost += inflight[i].busy == 2;
    double secs = mono() - measure;
    printf("seconds=%.3f\nregisters=%lld\nwatches=%lld\nstatus_ok=%lld\nstatus_wrong=%lld\n"
           "status_behind=%lld\nstatus_stale=%lld\nstatus_lost=%lld\nproven=%lld\nunproven=%lld\npushes=%lld\n"
           "other=%lld\ndns_sent=%lld\ndns_ok=%lld\ndns_wrong=%lld\ndns_truncated=%lld\n"
           "dns_rcode=%lld\ndns_lost=%lld\ndns_stale=%lld\nsend_errors=%lld\ncpu_share=%.3f\n",
           end - measure, st.registers, st.watches, st.ok, st.wrong, st.behind, st.stale, st.lost, st.proven,
           st.unproven, st.pushes, st.other, st.dns_sent, st.dns_ok, st.dns_wrong, st.dns_tc,
           st.dns_rcode, st.dns_lost, st.dns_stale, st.send_errors,
           (cpu_seconds() - cpu0) / secs);
    if (first_wrong[0]) printf("first_wrong=%s\n", first_wrong);
    lat_print("status", &lat_status, st.lost + st.behind);
    lat_print("dns", &lat_dns, st.dns_lost + st.dns_tc + st.dns_rcode + st.dns_wrong);
    return st.wrong || st.dns_wrong ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || sodium_init() < 0) {
        fprintf(stderr, "usage: gen keys|dump|fill|steady [options] (see the source)\n");
        return 2;
    }
    const char *mode = argv[1], *keyfile = NULL, *reg = NULL, *out = NULL;
    int port = 3478, dns_port = 53, window = 48, threads = 1;
    double interval = 20, warmup = 0, seconds = 10, share = 1, dns_per_peer = 1;
    uint32_t active = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "gen: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "--peers")) npeers = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--active")) active = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--keys")) keyfile = v;
        else if (!strcmp(a, "--registrar")) reg = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--dns-port")) dns_port = atoi(v);
        else if (!strcmp(a, "--window")) window = atoi(v);
        else if (!strcmp(a, "--interval")) interval = atof(v);
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--watch-share")) share = atof(v);
        else if (!strcmp(a, "--dns-per-peer")) dns_per_peer = atof(v);
        else { fprintf(stderr, "gen: unknown option %s\n", a); return 2; }
        i++;
    }
    if (npeers < 1 || npeers > MAX_PEERS || threads < 1 || threads > 16 || window < 1 ||
        window > 65536 || seconds <= 0 || seconds > 3600 || warmup < 0 || warmup > 3600 || interval <= 0 || share < 0 ||
        share > 1 || dns_per_peer < 0 || active > npeers) {
        fprintf(stderr, "gen: option out of range\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    crc_init();
    randombytes_buf(rng_s, sizeof rng_s);
    rng_s[0] |= 1;
    if (!strcmp(mode, "keys")) {
        keyed = active ? active : npeers;
        if (!reg || strlen(reg) != 64 || !out) return 2;
        return mode_keys(reg, out, threads);
    }
    if (!keyfile) { fprintf(stderr, "gen: --keys FILE\n"); return 2; }
    load_keys(keyfile);
    if (!strcmp(mode, "dump")) return mode_dump();
    batch_init(&wg, open_socket(WG_PORT), port);
    batch_init(&ctl, open_socket(CTL_PORT), port);
    batch_init(&dns, open_socket(DNS_SRC_PORT), dns_port);
    if (!strcmp(mode, "fill")) return mode_fill(window);
    if (!strcmp(mode, "steady"))
        return mode_steady(active ? active : npeers, interval, warmup, seconds, share,
                           dns_per_peer);
    fprintf(stderr, "gen: unknown mode %s\n", mode);
    return 2;
}
"""
"""The load generator (see the comment at its top), compiled at run time."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The registrar seen from outside at one instant."""

    at: float
    """Monotonic seconds."""
    cpu: float
    """CPU seconds so far (user + system, all threads)."""
    user: float
    """The user-space part of it."""
    counters: dict[str, float]
    """Its metrics (``name{labels}`` -> value)."""
    drops: int
    """Datagrams the kernel dropped at its UDP sockets (receive buffer full)."""
    waited: float
    """Seconds its main thread waited for a CPU while runnable (/proc/PID/schedstat)."""
    generator_drops: int
    """Datagrams the kernel dropped at the generator's sockets (answers lost on our side)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One size."""

    peers: int
    """Registered peers."""
    active: int
    """Peers refreshing at the probe interval (= peers unless scaled)."""
    fill_s: float
    """Seconds the fill took."""
    fill_rate: float
    """First contacts per second during the fill."""
    rss0_mib: float
    """VmRSS with 0 peers."""
    rss_mib: float
    """VmRSS at the end."""
    cpu_share: float
    """Registrar CPU seconds / wall seconds over the counted window."""
    waited: float
    """Share of the window the registrar was runnable but waited for its CPU (other work)."""
    us_round: float
    """Registrar CPU microseconds per peer round (Register, Watch, query)."""
    user_share: float
    """The user-space part of ``us_round`` (the rest is the kernel's: receiving, sending and,
    on loopback, delivering the answers into the generator's sockets)."""
    rounds: float
    """Registrations per second the registrar recorded."""
    reg_ms: tuple[float, float]
    """Register+Watch -> Status p50, p99."""
    dns_ms: tuple[float, float]
    """Query -> answer p50, p99."""
    answered: float
    """Share of Watches answered with a right Status."""
    dns_answered: float
    """Share of queries answered right."""
    drops: int
    """Datagrams the kernel dropped at the registrar's sockets in the window."""
    problems: tuple[str, ...]
    """Wrong answers, drops, rejections, errors: anything a healthy run does not have."""

    @property
    def full(self) -> bool:
        return self.active == self.peers

    @property
    def kib_per_peer(self) -> float:
        return (self.rss_mib - self.rss0_mib) * 1024 / self.peers

    def projected(self, interval: float) -> float:
        """CPU share with every peer refreshing every ``interval`` seconds."""
        return self.us_round * 1e-6 * self.peers / interval


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def udp_drops(ports: Sequence[int]) -> int:
    """Drops counted by the kernel at the UDP sockets bound to ``ports`` (this namespace)."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) in ports:
            total += int(fields[-1])
    return total


def scrape() -> dict[str, float]:
    with urllib.request.urlopen(METRICS, timeout=10) as r:  # loopback, our own registrar
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix(PREFIX)] = float(value)
    return out


def snapshot(pid: int) -> Snapshot:
    (user, system), at = cpu_seconds(pid), time.monotonic()
    waited = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    drops = udp_drops((STUN_PORT, STUN_PORT + 1, DNS_PORT))
    return Snapshot(at, user + system, user, scrape(), drops, waited,
                    udp_drops((51820, 51821, 51822)))  # fmt: skip


def kv(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


class Processes:
    """What this run started; each is ended by its PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, cmd: list[str], cpu: int, **kw: Any) -> subprocess.Popen[Any]:
        p = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], **kw)  # taskset execs: same PID
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[Any], grace: float = 60.0) -> None:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(self.procs):
            self.stop(p, 10.0)


def build_generator(work: Path) -> Path:
    source, binary = work / "gen.c", work / "gen"
    source.write_text(GENERATOR_C)
    cc = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source),
                         "-l:libsodium.so.23", "-lpthread"], capture_output=True, text=True)  # fmt: skip
    if cc.returncode != 0:
        raise RuntimeError(f"gcc failed (libsodium23 installed?):\n{cc.stderr}")
    return binary


def check_generator(gen: Path, keys: Path, reg_private: bytes) -> None:
    """Peer 0's messages from the generator, read back with wgmesh's own decoders."""
    import dns.message

    from wgmesh.proto import sealed, stun
    from wgmesh.proto.endpoint import Endpoint
    from wgmesh.proto.keys import key_label

    out = kv(subprocess.run([str(gen), "dump", "--keys", str(keys), "--peers", "1"],
                            capture_output=True, text=True, check=True).stdout)  # fmt: skip
    raw = keys.read_bytes()[:64]
    registrar = sealed.Sealer(reg_private)
    assert registrar.shared_key(raw[:32]) == raw[32:], "shared key differs from wgmesh's"
    reg = sealed.open_sealed(registrar, stun.decode(bytes.fromhex(out["register"])), None)[1]
    watch = sealed.open_sealed(registrar, stun.decode(bytes.fromhex(out["watch"])), None)[1]
    lan = (Endpoint.of("10.0.0.0", 51820),)
    assert isinstance(reg, sealed.Register) and reg.counter == 1000 and reg.addresses == lan
    assert isinstance(watch, sealed.Watch) and watch.register_counter == 1000
    assert watch.interest is None and 30 + watch.padding + 25 == sealed.WATCH_MIN
    query = dns.message.from_wire(bytes.fromhex(out["query"]))
    assert str(query.question[0].name) == f"{key_label(raw[:32])}._wireguard._udp.mesh.test."


def peer_ip(p: int) -> int:
    """Peer p's address, as the generator has it: 127.(16 + p/65536).(p/256 % 256).(p % 256)."""
    return 127 << 24 | (16 + (p >> 16)) << 16 | (p & 0xFFFF)


def write_state(state: Path, keys: Path, lo: int, hi: int) -> None:
    """Peers lo..hi-1 in the registrar's own database, as it writes them for a peer whose
    first Register came from its WireGuard socket (what a restart restores)."""
    from ipaddress import IPv4Address

    from wgmesh.proto.endpoint import Endpoint
    from wgmesh.proto.kinds import NatKind
    from wgmesh.proto.registry import Change, PeerEntry, PeerEvent
    from wgmesh.registry.store import Store

    now = time.time()
    store = Store(state)
    with keys.open("rb") as f:
        f.seek(64 * lo)
        for start in range(lo, hi, 50_000):
            chunk = f.read(64 * (min(hi, start + 50_000) - start))
            events = []
            for i in range(len(chunk) // 64):
                p = start + i
                entry = PeerEntry(
                    key=chunk[64 * i : 64 * i + 32],
                    name=f"p{p:07d}",
                    mappings=(Endpoint(IPv4Address(peer_ip(p)), 51820),),
                    addresses=(Endpoint(IPv4Address(10 << 24 | (p & 0xFFFFFF)), 51820),),
                    nat=NatKind.UNKNOWN,
                    since=now,
                    refreshed=(now,),
                    register_counter=int(now * 1e6),
                    software="wgmesh/bench",
                )
                events.append(PeerEvent(Change.ADDED, entry))
            store.apply(events, 1)
    store.close()


def start_registrar(
    procs: Processes, work: Path, state: Path, cpu: int, x25519_rate: float | None
) -> subprocess.Popen[Any]:
    cmd = [sys.executable, __file__, "--as-registrar", str(x25519_rate or 0), "registrar",
           "--zone", "mesh.test", "--private-key-file", str(work / "registrar.key"),
           "--listen", "127.0.0.1", "--stun-port", str(STUN_PORT), "--dns-port", str(DNS_PORT),
           "--state-dir", str(state), "--open", "--expiry", "3600",
           "--metrics", f"127.0.0.1:{METRICS_PORT}"]  # fmt: skip
    with open(work / "registrar.log", "ab") as log:
        p = procs.start(cmd, cpu, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            scrape()
            return p
        except OSError:
            if p.poll() is not None or time.monotonic() > deadline:
                tail = (work / "registrar.log").read_text()[-2000:]
                raise RuntimeError(f"the registrar did not start:\n{tail}") from None
            time.sleep(0.1)


def run_registrar_child(argv: list[str]) -> int:
    """``--as-registrar RATE registrar ...``: the real CLI, with the X25519 cap for unknown keys
    set to RATE per second (0: the registrar's own). No flag sets it, so it is set here."""
    import wgmesh.cli.registrar as cli
    from wgmesh.cli.main import main as wgmesh_main
    from wgmesh.proto.ratelimit import RateLimitConfig

    rate = float(argv[0])
    if rate > 0:
        original = cli.settings_from

        def settings_from(given: Any) -> Any:
            s = original(given)
            limit = RateLimitConfig(rate=rate, burst=rate, max_sources=1)
            return dataclasses.replace(
                s, registry=dataclasses.replace(s.registry, agreement_limit=limit)
            )

        cli.settings_from = settings_from
    return wgmesh_main(argv[1:])


def wait_mark(stream: IO[str], mark: str, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)
        if line.strip() == mark:
            return
    raise RuntimeError(f"the generator ended before {mark}: {''.join(lines)[-2000:]}")


def delta(a: Snapshot, b: Snapshot, name: str) -> float:
    return b.counters.get(name, 0.0) - a.counters.get(name, 0.0)


def problems_of(a: Snapshot, b: Snapshot, out: dict[str, str], peers: int) -> tuple[str, ...]:
    found = []
    for name, value in sorted(b.counters.items()):
        if name.startswith(("rejected_total", "rate_limited_total", "errors_total",
                            "dns_dropped_total", "dns_rrl_total{decision=\"dropped\"",
                            "dns_truncated_total")):  # fmt: skip
            d = value - a.counters.get(name, 0.0)
            if d:
                found.append(f"registrar {name} +{d:.0f}")
    if b.drops - a.drops:
        found.append(f"kernel dropped {b.drops - a.drops} datagrams at the registrar's sockets")
    if b.generator_drops - a.generator_drops:
        found.append(f"kernel dropped {b.generator_drops - a.generator_drops} answers at the "
                     "generator's sockets")  # fmt: skip
    if b.counters.get("peers", 0) != peers:
        found.append(f"registrar holds {b.counters.get('peers', 0):.0f} peers, not {peers}")
    for key in ("status_wrong", "dns_wrong", "dns_truncated", "dns_rcode", "send_errors"):
        if int(out[key]):
            found.append(f"generator {key} {out[key]}")
    if "first_wrong" in out:
        found.append(f"first wrong answer: {out['first_wrong'][:120]}")
    return tuple(found)


def active_of(n: int, args: argparse.Namespace) -> int:
    return min(n, int(args.max_rounds * args.interval))


def run_size(
    n: int, args: argparse.Namespace, gen: Path, keys: Path, work: Path, procs: Processes
) -> Row:
    active = active_of(n, args)
    scaled = "" if active == n else f" ({active:,} of them refreshing: scaled, see --max-rounds)"
    print(f"\n== {n:,} peers{scaled}", flush=True)
    x25519 = None if args.stock_x25519_limit else 1e6
    state = args.state_root / "state"
    shutil.rmtree(state, ignore_errors=True)
    t = time.monotonic()
    registrar = start_registrar(procs, work, state, args.registrar_cpu, x25519)
    started = time.monotonic() - t
    rss0 = rss_mib(registrar.pid)
    if active < n:  # the others are restored from the registrar's database at start-up
        procs.stop(registrar)
        shutil.rmtree(state)
        t = time.monotonic()
        write_state(state, keys, active, n)
        written = time.monotonic() - t
        t = time.monotonic()
        registrar = start_registrar(procs, work, state, args.registrar_cpu, x25519)
        print(f"restore: {n - active:,} peers written to the registrar's database in "
              f"{written:.1f} s; its start-up restoring them took {time.monotonic() - t:.1f} s "
              f"(empty: {started:.1f} s); RSS {rss0:.1f} MiB (empty) -> "
              f"{rss_mib(registrar.pid):.1f} MiB", flush=True)  # fmt: skip
    try:
        pid = registrar.pid
        base = [str(gen), "--keys", str(keys), "--peers", str(n), "--port", str(STUN_PORT)]
        t = time.monotonic()
        fill = procs.start([str(gen), "fill", "--keys", str(keys), "--peers", str(active),
                            "--port", str(STUN_PORT)], args.load_cpu, stdout=subprocess.PIPE,
                           text=True)  # fmt: skip
        fill_out = kv(fill.communicate(timeout=3600 + 60)[0])
        procs.procs.remove(fill)
        fill_s = time.monotonic() - t
        print(f"fill: {int(fill_out['registered']):,} registered in {fill_s:.1f} s "
              f"({float(fill_out['rate']):,.0f}/s first contacts; Status p50 "
              f"{float(fill_out['status_p50_us']) / 1000:.2f} ms, p99 "
              f"{float(fill_out['status_p99_us']) / 1000:.2f} ms; retries "
              f"{fill_out['retries']}, failed {fill_out['failed']}, wrong {fill_out['wrong']}, behind "
              f"{fill_out['behind']}); "
              f"RSS {rss0:.1f} -> {rss_mib(pid):.1f} MiB", flush=True)  # fmt: skip
        if int(fill_out["registered"]) != active or int(fill_out["wrong"]):
            raise RuntimeError(f"fill incomplete: {fill_out}")
        steady = procs.start(
            [*base[:1], "steady", *base[1:], "--dns-port", str(DNS_PORT), "--active",
             str(active), "--interval", str(args.interval), "--warmup", str(args.warm_up),
             "--seconds", str(args.seconds), "--watch-share", str(args.watch_share),
             "--dns-per-peer", str(args.dns_per_peer)],
            args.load_cpu, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert steady.stdout is not None
        lines: list[str] = []
        wait_mark(steady.stdout, "phase=measure", lines)
        a = snapshot(pid)
        wait_mark(steady.stdout, "phase=drain", lines)
        b = snapshot(pid)
        rest, _ = steady.communicate(timeout=60)
        procs.procs.remove(steady)
        out = kv("".join(lines) + rest)
        rss = rss_mib(pid)
        wall = b.at - a.at
        used = b.cpu - a.cpu
        registered = delta(a, b, "registrations_total")
        watches = int(out["watches"])
        queries = int(out["dns_sent"])
        row = Row(
            peers=n,
            active=active,
            fill_s=fill_s,
            fill_rate=float(fill_out["rate"]),
            rss0_mib=rss0,
            rss_mib=rss,
            cpu_share=used / wall,
            waited=(b.waited - a.waited) / wall,
            us_round=used * 1e6 / max(1.0, registered),
            user_share=(b.user - a.user) / max(1e-9, used),
            rounds=registered / wall,
            reg_ms=(float(out["status_p50_us"]) / 1000, float(out["status_p99_us"]) / 1000),
            dns_ms=(float(out["dns_p50_us"]) / 1000, float(out["dns_p99_us"]) / 1000),
            answered=int(out["status_ok"]) / max(1, watches),
            dns_answered=int(out["dns_ok"]) / max(1, queries),
            drops=b.drops - a.drops,
            problems=problems_of(a, b, out, n),
        )
        print(f"steady {wall:.1f} s: offered {int(out['registers']) / wall:,.0f} Registers/s, "
              f"{watches / wall:,.0f} Watches/s, {queries / wall:,.0f} queries/s; registrar "
              f"recorded {row.rounds:,.0f} registrations/s, {delta(a, b, 'watches_total') / wall:,.0f}"
              f" Statuses/s, {delta(a, b, 'dns_queries_total') / wall:,.0f} queries/s")  # fmt: skip
        print(f"  registrar CPU {row.cpu_share:.0%} ({row.us_round:.0f} us per round, "
              f"{row.user_share:.0%} of it in user space), waited "
              f"for its CPU {row.waited:.0%} of the time; "
              f"generator CPU {float(out['cpu_share']):.0%}; RSS {rss:.1f} MiB "
              f"({row.kib_per_peer:.2f} KiB/peer over {rss0:.1f} MiB at 0 peers); push targets "
              f"{b.counters.get('push_targets', 0):,.0f}; pushes received {out['pushes']}")  # fmt: skip
        print(f"  registration (Register+Watch -> Status): {out['status_ok']} of {watches} "
              f"answered right, {out['status_behind']} not naming the last Register, "
              f"{out['status_lost']} lost, {out['status_stale']} late; p50 "
              f"{row.reg_ms[0]:.2f} ms, p90 {float(out['status_p90_us']) / 1000:.2f}, p99 "
              f"{row.reg_ms[1]:.2f}, p99.9 {float(out['status_p999_us']) / 1000:.2f}, max "
              f"{float(out['status_max_us']) / 1000:.1f} ms")  # fmt: skip
        print(f"  DNS SRV: {out['dns_ok']} of {queries} answered right, {out['dns_lost']} lost; "
              f"p50 {row.dns_ms[0]:.2f} ms, p90 {float(out['dns_p90_us']) / 1000:.2f}, p99 "
              f"{row.dns_ms[1]:.2f}, p99.9 {float(out['dns_p999_us']) / 1000:.2f}, max "
              f"{float(out['dns_max_us']) / 1000:.1f} ms")  # fmt: skip
        for p in row.problems:
            print(f"  ! {p}")
        return row
    finally:
        procs.stop(registrar)


def verdicts(rows: list[Row], interval: float) -> None:
    print(f"\ntargets (a row 'scaled' refreshed only part of its peers: its CPU share at N/"
          f"{interval:g} s is projected from the measured CPU per round)")  # fmt: skip
    for r in rows:
        keeps = r.answered >= 0.99 and r.dns_answered >= 0.99 and not r.drops
        how = (f"{r.answered:.1%} of Watches and {r.dns_answered:.1%} of queries answered "
               f"right, {r.drops} datagrams dropped")  # fmt: skip
        if r.full:
            ok = r.cpu_share < 1.0 and keeps
            how = f"measured {r.cpu_share:.0%} CPU; {how}"
        else:
            ok = r.projected(interval) < 1.0
            how = f"projected {r.projected(interval):.0%} CPU; at {r.active:,} peers: {how}"
        print(f"  {r.peers:>9,} peers at {interval:g} s ({r.peers / interval:,.0f} "
              f"registrations/s) on < 1 core: {'MET' if ok else 'MISSED'} ({how})")  # fmt: skip
    for r in rows:
        verdict = "MET" if r.kib_per_peer <= KIB_TARGET else "MISSED"
        print(f"  {r.peers:>9,} peers <= {KIB_TARGET:g} KiB/peer: {verdict} "
              f"({r.kib_per_peer:.2f})")  # fmt: skip
    for r in rows:
        if r.peers >= 1_000_000:
            p99 = max(r.reg_ms[1], r.dns_ms[1])
            share = r.cpu_share if r.full else r.projected(interval)
            ok = p99 <= P99_TARGET_MS and share <= 1.0
            note = "" if r.full else f" (p99s at {r.active:,} refreshing peers)"
            print(f"  {r.peers:>9,} peers: registration and DNS p99 <= {P99_TARGET_MS:g} ms on "
                  f"<= 1 core: {'MET' if ok else 'MISSED'} (p99 {r.reg_ms[1]:.2f} / "
                  f"{r.dns_ms[1]:.2f} ms, CPU {share:.0%}){note}")  # fmt: skip


def ratio(a: float, b: float) -> str:
    return f"x{a / b:.2f}" if math.isfinite(a) and math.isfinite(b) and b > 0 else "n/a"


def report(rows: list[Row], interval: float) -> None:
    print("\ncolumns: peers (refreshing); fill first contacts/s; registrar CPU share measured and")
    print(f"at N/{interval:g} s (projected from CPU per round); CPU us per round (Register +")
    print("Watch + query); RSS per peer; registration (Register+Watch -> Status) and DNS p50/p99")
    print(f"{'peers':>20}{'fill/s':>8}{'CPU':>6}{'at N/20':>8}{'us/rnd':>7}{'KiB/p':>7}"
          f"{'reg p50':>8}{'p99 ms':>7}{'dns p50':>8}{'p99 ms':>7}")  # fmt: skip
    for r in rows:
        who = f"{r.peers:,}" + ("" if r.full else f" ({r.active // 1000}k)")
        print(f"{who:>20}{r.fill_rate:8,.0f}{r.cpu_share:6.0%}{r.projected(interval):8.0%}"
              f"{r.us_round:7.0f}{r.kib_per_peer:7.2f}{r.reg_ms[0]:8.2f}{r.reg_ms[1]:7.2f}"
              f"{r.dns_ms[0]:8.2f}{r.dns_ms[1]:7.2f}")  # fmt: skip
    if len(rows) > 1:
        b = rows[0]
        print(f"growth (ratio to the {b.peers:,} row; 'n/a' where a p99 is inf):")
        for r in rows[1:]:
            print(f"{r.peers:>20,}  peers x{r.peers / b.peers:g}: CPU at N/{interval:g} "
                  f"{ratio(r.projected(interval), b.projected(interval))}, CPU per round "
                  f"{ratio(r.us_round, b.us_round)}, RSS per peer "
                  f"{ratio(r.kib_per_peer, b.kib_per_peer)}, registration p50 "
                  f"{ratio(r.reg_ms[0], b.reg_ms[0])} p99 {ratio(r.reg_ms[1], b.reg_ms[1])}, "
                  f"DNS p50 {ratio(r.dns_ms[0], b.dns_ms[0])} p99 "
                  f"{ratio(r.dns_ms[1], b.dns_ms[1])}")  # fmt: skip


def enter_namespace() -> None:
    """Re-run this script in a new network namespace (loopback only), unless already there."""
    if os.environ.get(NETNS_MARK) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    if os.geteuid() != 0 or not shutil.which("unshare"):
        raise SystemExit("needs root and unshare(1): it runs in a private network namespace")
    env = {**os.environ, NETNS_MARK: "1"}
    os.execvpe("unshare", ["unshare", "--net", "--", sys.executable, __file__, *sys.argv[1:]], env)


def main() -> int:
    if sys.argv[1:2] == ["--as-registrar"]:
        return run_registrar_child(sys.argv[2:])
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cpus = sorted(os.sched_getaffinity(0))
    ap.add_argument("--peers", default="10000,100000,1000000", help="sizes, comma-separated")
    ap.add_argument("--quick", action="store_true", help="10k peers, 20 s counted")
    ap.add_argument("--seconds", type=float, default=40.0, help="counted seconds per size (40)")
    ap.add_argument("--warm-up", type=float, help="uncounted seconds first (default: interval)")
    ap.add_argument("--interval", type=float, default=20.0, help="probe interval (20 s)")
    ap.add_argument("--max-rounds", type=float, default=500.0,
                    help="most peer rounds per second offered (500: 10k peers at 20 s)")  # fmt: skip
    ap.add_argument("--watch-share", type=float, default=1.0, help="share of peers that Watch")
    ap.add_argument("--dns-per-peer", type=float, default=1.0, help="queries per peer per interval")
    ap.add_argument("--stock-x25519-limit", action="store_true",
                    help="keep the registrar's 2,000 X25519/s cap for the fill")  # fmt: skip
    ap.add_argument("--state-in", metavar="DIR",
                    help="where the registrar's state dir is made (default: the temp dir; "
                    "/dev/shm takes the disk's fsync out)")  # fmt: skip
    ap.add_argument("--registrar-cpu", type=int, default=cpus[0])
    ap.add_argument("--load-cpu", type=int, default=cpus[-1])
    args = ap.parse_args()
    sizes = [10_000] if args.quick else [int(s) for s in args.peers.split(",")]
    if args.quick:
        args.seconds = min(args.seconds, 20.0)
    if args.warm_up is None:
        args.warm_up = args.interval
    if not all(1 <= n <= 4_000_000 for n in sizes) or not 0 < args.seconds <= 600:
        ap.error("sizes in 1..4,000,000 and --seconds in (0, 600]")
    if not 0 <= args.warm_up <= 600 or not 1 <= args.interval <= 600 or args.max_rounds < 1:
        ap.error("--warm-up in [0, 600], --interval in [1, 600], --max-rounds >= 1")
    if args.registrar_cpu == args.load_cpu:
        ap.error("needs two CPUs: one for the registrar, one for the load generator")
    missing = [t for t in ("gcc", "taskset", "ip") if not shutil.which(t)]
    if missing:
        ap.error(f"needs {', '.join(missing)}")
    enter_namespace()
    from nacl.public import PrivateKey

    from wgmesh.proto.keys import encode_key

    started = time.monotonic()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} "
          f"CPUs; registrar on CPU {args.registrar_cpu} "
          f"({'uvloop' if importlib.util.find_spec('uvloop') else 'asyncio'}), generator on "
          f"CPU {args.load_cpu}; private network namespace, loopback")  # fmt: skip
    print(f"registrar settings changed: --expiry 3600; X25519 cap for unknown keys "
          f"{'2000/s (stock)' if args.stock_x25519_limit else 'raised to 1e6/s'}")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="wgmesh-scale-"))
    args.state_root = Path(tempfile.mkdtemp(prefix="wgmesh-scale-state-", dir=args.state_in))
    procs = Processes()
    rows: list[Row] = []
    failed = False
    try:
        reg_private = PrivateKey.generate()
        key_file = work / "registrar.key"
        key_file.write_text(encode_key(bytes(reg_private)) + "\n")
        key_file.chmod(0o600)
        gen = build_generator(work)
        keys = work / "peers.bin"
        keyed = max(active_of(n, args) for n in sizes)
        t = time.monotonic()
        subprocess.run([str(gen), "keys", "--peers", str(max(sizes)), "--active", str(keyed),
                        "--registrar", bytes(reg_private.public_key).hex(), "--out", str(keys),
                        "--threads", str(len(cpus))], check=True, timeout=3600)  # fmt: skip
        took = time.monotonic() - t
        print(f"peer keys: {keyed:,} key pairs and shared keys (2 X25519 each) and "
              f"{max(sizes) - keyed:,} keys of registered-only peers in {took:.1f} s on "
              f"{len(cpus)} CPUs ({took * 1e6 / keyed:.0f} us per keyed peer); generator "
              f"checked with wgmesh's decoders", flush=True)  # fmt: skip
        check_generator(gen, keys, bytes(reg_private))
        for n in sizes:
            try:
                rows.append(run_size(n, args, gen, keys, work, procs))
            except (RuntimeError, subprocess.SubprocessError, OSError, KeyError) as exc:
                print(f"\n{n:,} peers: FAILED: {exc}", flush=True)
                failed = True
                break
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(args.state_root, ignore_errors=True)
    report(rows, args.interval)
    verdicts(rows, args.interval)
    print(f"\nwall time {time.monotonic() - started:.0f} s; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
