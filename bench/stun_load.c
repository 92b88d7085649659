/* STUN Binding load generator for bench/stun_qps.py (wgmesh's own code, loopback only).

   stun_load --port P [--host 127.0.0.1] [--seconds S] [--sockets N] [--window W]
             [--fingerprint] [--show K]
       Sends RFC 8489 Binding Requests (magic cookie, random transaction ids) from N UDP
       sockets, keeping at most W requests outstanding per socket, with sendmmsg/recvmmsg.
       Every response is checked: Binding Success, length, cookie, the transaction id of an
       outstanding request, an XOR-MAPPED-ADDRESS equal to the socket's own address, and the
       FINGERPRINT when there is one. A socket that hears nothing for 20 ms counts its
       outstanding requests as lost and sends a fresh window. Stops after S seconds and prints
       key=value lines, including its own CPU time (getrusage), so the caller can tell whether
       the generator or the server was the bottleneck. --show K prints the first K responses.

   stun_load --serve P [--seconds S]
       A minimal responder (recvmmsg, XOR-MAPPED-ADDRESS only, sendmmsg): the calibration
       target that shows how fast the generator can go when the server is not the limit.

   Bounded: everything stops after --seconds (default 10, at most 600). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define COOKIE 0x2112A442u
#define MAX_SOCKETS 64
#define MAX_WINDOW 1024
#define BATCH 64
#define PKT 1500
#define STALL_NS 20000000LL

static uint64_t rng_s[2];

static uint64_t rng(void) { /* xorshift128+ */
    uint64_t a = rng_s[0], b = rng_s[1];
    rng_s[0] = b;
    a ^= a << 23;
    rng_s[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
    return rng_s[1] + b;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
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

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void wr16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xFF; }
static void wr32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = (v >> 16) & 0xFF; p[2] = (v >> 8) & 0xFF; p[3] = v & 0xFF;
}

struct sock {
    int fd;
    struct sockaddr_in local;
    uint8_t tid[MAX_WINDOW][12];
    uint8_t active[MAX_WINDOW];
    int free_slots[MAX_WINDOW];
    int nfree;
    long long last_progress;
};

static struct {
    long long sent, valid, bad, stale, lost, send_errors;
    long long bad_type, bad_xor, bad_fp;
} st;

static int fingerprint = 0;
static int show = 0;

/* A Binding Request for slot `slot`: the first two bytes of the transaction id carry the slot
   number, the other ten are random. */
static size_t build_request(uint8_t *out, uint8_t tid[12], int slot) {
    uint64_t r1 = rng(), r2 = rng();
    tid[0] = slot >> 8;
    tid[1] = slot & 0xFF;
    memcpy(tid + 2, &r1, 8);
    memcpy(tid + 10, &r2, 2);
    wr16(out, 0x0001);
    wr16(out + 2, fingerprint ? 8 : 0);
    wr32(out + 4, COOKIE);
    memcpy(out + 8, tid, 12);
    if (!fingerprint) return 20;
    wr16(out + 20, 0x8028);
    wr16(out + 22, 4);
    wr32(out + 24, crc32(out, 20) ^ 0x5354554Eu);
    return 28;
}

static void print_response(const uint8_t *p, size_t n) {
    printf("response: %zu bytes type=0x%04x tid=", n, rd16(p));
    for (int i = 8; i < 20; i++) printf("%02x", p[i]);
    size_t pos = 20;
    while (pos + 4 <= n) {
        uint16_t t = rd16(p + pos), l = rd16(p + pos + 2);
        const uint8_t *v = p + pos + 4;
        if (pos + 4 + l > n) break;
        if ((t == 0x0020 || t == 0x0001 || t == 0x802b || t == 0x802c) && l == 8) {
            uint16_t port = rd16(v + 2);
            uint32_t a = rd32(v + 4);
            if (t == 0x0020) { port ^= COOKIE >> 16; a ^= COOKIE; }
            const char *name = t == 0x0020 ? "XOR-MAPPED-ADDRESS" : t == 0x0001 ? "MAPPED-ADDRESS"
                             : t == 0x802b ? "RESPONSE-ORIGIN" : "OTHER-ADDRESS";
            printf(" %s=%u.%u.%u.%u:%u", name, a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255,
                   port);
        } else if (t == 0x8022) {
            printf(" SOFTWARE=\"%.*s\"", (int)l, (const char *)v);
        } else if (t == 0x8028 && l == 4) {
            uint32_t want = crc32(p, pos) ^ 0x5354554Eu;
            printf(" FINGERPRINT=%s", rd32(v) == want ? "ok" : "BAD");
        } else {
            printf(" attr0x%04x(%u bytes)", t, l);
        }
        pos += 4 + ((l + 3u) & ~3u);
    }
    printf("\n");
}

/* 1 valid, 0 stale (no such outstanding request), -1 bad. Frees the slot when valid. */
static int check_response(struct sock *s, const uint8_t *p, size_t n) {
    if (n < 20 || rd16(p) != 0x0101 || rd16(p + 2) != n - 20 || (n & 3) || rd32(p + 4) != COOKIE) {
        st.bad_type++;
        return -1;
    }
    int slot = p[8] << 8 | p[9];
    if (slot >= MAX_WINDOW || !s->active[slot] || memcmp(s->tid[slot], p + 8, 12) != 0) return 0;
    int xor_ok = 0;
    size_t pos = 20;
    while (pos + 4 <= n) {
        uint16_t t = rd16(p + pos), l = rd16(p + pos + 2);
        const uint8_t *v = p + pos + 4;
        if (pos + 4 + l > n) break;
        if (t == 0x0020 && l == 8 && v[1] == 1) {
            uint16_t port = rd16(v + 2) ^ (COOKIE >> 16);
            uint32_t a = rd32(v + 4) ^ COOKIE;
            xor_ok = port == ntohs(s->local.sin_port) && a == ntohl(s->local.sin_addr.s_addr);
        } else if (t == 0x8028) {
            if (l != 4 || pos + 8 != n || rd32(v) != (crc32(p, pos) ^ 0x5354554Eu)) {
                st.bad_fp++;
                return -1;
            }
        }
        pos += 4 + ((l + 3u) & ~3u);
    }
    if (!xor_ok) {
        st.bad_xor++;
        return -1;
    }
    if (show > 0) {
        show--;
        print_response(p, n);
    }
    s->active[slot] = 0;
    s->free_slots[s->nfree++] = slot;
    return 1;
}

static uint8_t sendbuf[BATCH][32];
static struct mmsghdr smsg[BATCH];
static struct iovec siov[BATCH];

/* Fill every free slot of the socket with a new request. */
static void refill(struct sock *s) {
    while (s->nfree > 0) {
        int n = 0;
        while (s->nfree > 0 && n < BATCH) {
            int slot = s->free_slots[--s->nfree];
            siov[n].iov_base = sendbuf[n];
            siov[n].iov_len = build_request(sendbuf[n], s->tid[slot], slot);
            s->active[slot] = 1;
            memset(&smsg[n], 0, sizeof smsg[n]);
            smsg[n].msg_hdr.msg_iov = &siov[n];
            smsg[n].msg_hdr.msg_iovlen = 1;
            n++;
        }
        int done = sendmmsg(s->fd, smsg, n, 0);
        if (done < 0) done = 0;
        st.sent += done;
        if (done < n) { /* socket buffer full: give the unsent slots back, retry on next pass */
            st.send_errors += n - done;
            for (int i = done; i < n; i++) {
                int slot = rd16(sendbuf[i] + 8);
                s->active[slot] = 0;
                s->free_slots[s->nfree++] = slot;
            }
            return;
        }
    }
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static int load(const char *host, int port, double seconds, int nsock, int window) {
    static struct sock socks[MAX_SOCKETS];
    static uint8_t rbuf[BATCH][PKT];
    static struct mmsghdr rmsg[BATCH];
    static struct iovec riov[BATCH];
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) {
        fprintf(stderr, "stun_load: bad host %s\n", host);
        return 2;
    }
    int ep = epoll_create1(0);
    for (int i = 0; i < nsock; i++) {
        struct sock *s = &socks[i];
        s->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        struct sockaddr_in any = {.sin_family = AF_INET, .sin_addr = dst.sin_addr};
        if (s->fd < 0 || bind(s->fd, (struct sockaddr *)&any, sizeof any) < 0 ||
            connect(s->fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
            perror("stun_load: socket");
            return 2;
        }
        socklen_t len = sizeof s->local;
        getsockname(s->fd, (struct sockaddr *)&s->local, &len);
        s->nfree = 0;
        for (int k = window - 1; k >= 0; k--) s->free_slots[s->nfree++] = k;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    }
    for (int k = 0; k < BATCH; k++) {
        riov[k].iov_base = rbuf[k];
        riov[k].iov_len = PKT;
        rmsg[k].msg_hdr.msg_iov = &riov[k];
        rmsg[k].msg_hdr.msg_iovlen = 1;
    }
    double cpu0 = cpu_seconds();
    long long start = now_ns(), end = start + (long long)(seconds * 1e9);
    for (int i = 0; i < nsock; i++) {
        socks[i].last_progress = start;
        refill(&socks[i]);
    }
    struct epoll_event evs[MAX_SOCKETS];
    long long t = start;
    while (t < end) {
        int n = epoll_wait(ep, evs, MAX_SOCKETS, 5);
        t = now_ns();
        for (int e = 0; e < n; e++) {
            struct sock *s = &socks[evs[e].data.u32];
            for (int rounds = 0; rounds < 16; rounds++) {
                int got = recvmmsg(s->fd, rmsg, BATCH, MSG_DONTWAIT, NULL);
                if (got <= 0) break;
                for (int k = 0; k < got; k++) {
                    int r = check_response(s, rbuf[k], rmsg[k].msg_len);
                    if (r > 0) st.valid++;
                    else if (r == 0) st.stale++;
                    else st.bad++;
                }
                s->last_progress = t;
                refill(s);
                if (got < BATCH) break;
            }
        }
        for (int i = 0; i < nsock; i++) { /* lost requests and unsent slots */
            struct sock *s = &socks[i];
            if (t - s->last_progress > STALL_NS) {
                for (int k = 0; k < window; k++)
                    if (s->active[k]) {
                        s->active[k] = 0;
                        s->free_slots[s->nfree++] = k;
                        st.lost++;
                    }
                s->last_progress = t;
            }
            if (s->nfree > 0) refill(s);
        }
    }
    double wall = (now_ns() - start) / 1e9, cpu = cpu_seconds() - cpu0;
    printf("seconds=%.3f\nsent=%lld\nvalid=%lld\nbad=%lld\nbad_type=%lld\nbad_xor=%lld\n"
           "bad_fingerprint=%lld\nstale=%lld\nlost=%lld\nsend_retries=%lld\nrate=%.0f\n"
           "cpu_seconds=%.3f\ncpu_share=%.3f\n",
           wall, st.sent, st.valid, st.bad, st.bad_type, st.bad_xor, st.bad_fp, st.stale,
           st.lost, st.send_errors, st.valid / wall, cpu, cpu / wall);
    return st.bad ? 1 : 0;
}

/* The calibration responder: answers any Binding Request with XOR-MAPPED-ADDRESS only. */
static int serve(const char *host, int port, double seconds) {
    static uint8_t buf[BATCH][PKT];
    static struct mmsghdr msg[BATCH];
    static struct iovec iov[BATCH];
    static struct sockaddr_in from[BATCH];
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    struct timeval tv = {0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("stun_load: bind");
        return 2;
    }
    printf("ready\n");
    fflush(stdout);
    long long end = now_ns() + (long long)(seconds * 1e9);
    while (now_ns() < end) {
        for (int k = 0; k < BATCH; k++) {
            iov[k].iov_base = buf[k];
            iov[k].iov_len = PKT;
            memset(&msg[k].msg_hdr, 0, sizeof msg[k].msg_hdr);
            msg[k].msg_hdr.msg_iov = &iov[k];
            msg[k].msg_hdr.msg_iovlen = 1;
            msg[k].msg_hdr.msg_name = &from[k];
            msg[k].msg_hdr.msg_namelen = sizeof from[k];
        }
        int got = recvmmsg(fd, msg, BATCH, MSG_WAITFORONE, NULL);
        if (got <= 0) continue;
        int out = 0;
        for (int k = 0; k < got; k++) {
            uint8_t *p = buf[k];
            if (msg[k].msg_len < 20 || rd16(p) != 0x0001 || rd32(p + 4) != COOKIE) continue;
            wr16(p, 0x0101);
            wr16(p + 2, 12);
            wr16(p + 20, 0x0020);
            wr16(p + 22, 8);
            p[24] = 0;
            p[25] = 1;
            wr16(p + 26, ntohs(from[k].sin_port) ^ (COOKIE >> 16));
            wr32(p + 28, ntohl(from[k].sin_addr.s_addr) ^ COOKIE);
            iov[k].iov_len = 32;
            if (out != k) msg[out] = msg[k];
            out++;
        }
        if (out) sendmmsg(fd, msg, out, 0);
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, serve_port = 0, nsock = 8, window = 32;
    double seconds = 10;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--fingerprint")) { fingerprint = 1; continue; }
        if (!v) { fprintf(stderr, "stun_load: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--serve")) serve_port = atoi(v);
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--sockets")) nsock = atoi(v);
        else if (!strcmp(a, "--window")) window = atoi(v);
        else if (!strcmp(a, "--show")) show = atoi(v);
        else { fprintf(stderr, "stun_load: unknown option %s\n", a); return 2; }
        i++;
    }
    if (seconds <= 0 || seconds > 600 || nsock < 1 || nsock > MAX_SOCKETS || window < 1 ||
        window > MAX_WINDOW || (!port && !serve_port)) {
        fprintf(stderr, "usage: stun_load --port P [--host H] [--seconds S<=600] [--sockets N<=%d]"
                        " [--window W<=%d] [--fingerprint] [--show K] | --serve P\n",
                MAX_SOCKETS, MAX_WINDOW);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    crc_init();
    uint64_t seed = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);
    rng_s[0] = seed | 1;
    rng_s[1] = seed * 0x9E3779B97F4A7C15ull + 7;
    if (serve_port) return serve(host, serve_port, seconds);
    return load(host, port, seconds, nsock, window);
}
