/* portguard's C library (loaded with ctypes by portguard/io/native.py; no Python API, no
 * allocation, no state: the caller owns every buffer).
 *
 * The kernel queue, read and answered in batches (batchqueue.py): python-netfilterqueue binds
 * the queue; pg_recv takes up to `max` queued packets with one recvmmsg(), pg_send all their
 * verdicts with one sendto() (the kernel's nfnetlink handles every message of a buffer in
 * turn). Meta words per packet (host byte order): id, mark, indev, outdev, payload offset
 * (into the receive buffer), payload length, flags.
 *
 * Conntrack's DESTROY reports (ctevents.py, ctparse.py): pg_recv_many reads many with one
 * recvmmsg(), pg_ct_parse reads one into words.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <linux/netlink.h>
#include <arpa/inet.h>

#define PG_META_WORDS 7
#define PG_MAX_BATCH 256
#define PG_VERDICT_LEN 40 /* nlmsghdr 16 + nfgenmsg 4 + verdict header attr 12 + mark attr 8 */

enum { M_ID, M_MARK, M_INDEV, M_OUTDEV, M_OFF, M_LEN, M_FLAGS };
enum { F_PAYLOAD = 1, F_TRUNCATED = 2 };
/* counters: messages, overruns (ENOBUFS), error acks, the last acked error, other messages */
enum { C_MESSAGES, C_OVERRUNS, C_ACKED_ERRORS, C_LAST_ERROR, C_OTHER };

#define NFNL_SUBSYS_QUEUE 3
#define NFQNL_MSG_PACKET 0
#define NFQNL_MSG_VERDICT 1
#define NFQA_PACKET_HDR 1
#define NFQA_VERDICT_HDR 2
#define NFQA_MARK 3
#define NFQA_IFINDEX_INDEV 5
#define NFQA_IFINDEX_OUTDEV 6
#define NFQA_PAYLOAD 10
#define ATTR_TYPE_MASK 0x3fff
#define ALIGN4(n) (((n) + 3u) & ~3u)

static uint32_t be32_at(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return ntohl(v);
}

/* One nfqueue packet message: its attributes into `meta`. 0 when it has no packet id. */
static int parse_packet(const uint8_t *msg, uint32_t len, uint32_t base, uint32_t *meta) {
    uint32_t at = NLMSG_HDRLEN + 4; /* nfgenmsg */
    int have_id = 0;
    memset(meta, 0, PG_META_WORDS * sizeof(uint32_t));
    while (at + 4 <= len) {
        uint16_t alen, atype;
        memcpy(&alen, msg + at, 2);
        memcpy(&atype, msg + at + 2, 2);
        if (alen < 4 || at + alen > len)
            break;
        const uint8_t *data = msg + at + 4;
        uint32_t dlen = alen - 4u;
        switch (atype & ATTR_TYPE_MASK) {
        case NFQA_PACKET_HDR:
            if (dlen >= 4) {
                meta[M_ID] = be32_at(data);
                have_id = 1;
            }
            break;
        case NFQA_MARK:
            if (dlen >= 4)
                meta[M_MARK] = be32_at(data);
            break;
        case NFQA_IFINDEX_INDEV:
            if (dlen >= 4)
                meta[M_INDEV] = be32_at(data);
            break;
        case NFQA_IFINDEX_OUTDEV:
            if (dlen >= 4)
                meta[M_OUTDEV] = be32_at(data);
            break;
        case NFQA_PAYLOAD:
            meta[M_OFF] = base + at + 4;
            meta[M_LEN] = dlen;
            meta[M_FLAGS] |= F_PAYLOAD;
            break;
        default:
            break;
        }
        at += ALIGN4(alen);
    }
    return have_id;
}

/* The packets of one received buffer (`len` bytes at buffer offset `base`) into `meta`; at most
 * `room` entries. Error acknowledgements (a verdict the kernel refused) are counted. */
int pg_parse(const uint8_t *buf, uint32_t len, uint32_t base, int truncated, uint32_t *meta,
             int room, uint32_t *counters) {
    int found = 0;
    uint32_t at = 0;
    while (at + NLMSG_HDRLEN <= len && found < room) {
        const struct nlmsghdr *nlh = (const struct nlmsghdr *)(buf + at);
        uint32_t mlen = nlh->nlmsg_len;
        int cut = 0;
        if (mlen < NLMSG_HDRLEN)
            break;
        if (at + mlen > len) { /* the message did not fit the slot: still find its id */
            if (!truncated)
                break;
            mlen = len - at;
            cut = 1;
        }
        if (nlh->nlmsg_type == ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)) {
            uint32_t *entry = meta + (size_t)found * PG_META_WORDS;
            if (parse_packet(buf + at, mlen, base + at, entry)) {
                if (cut) {
                    entry[M_FLAGS] = F_TRUNCATED;
                    entry[M_LEN] = 0;
                }
                found++;
            }
        } else if (nlh->nlmsg_type == NLMSG_ERROR && mlen >= NLMSG_HDRLEN + 4) {
            int32_t error;
            memcpy(&error, buf + at + NLMSG_HDRLEN, 4);
            if (error != 0) {
                counters[C_ACKED_ERRORS]++;
                counters[C_LAST_ERROR] = (uint32_t)(-error);
            }
        } else {
            counters[C_OTHER]++;
        }
        if (cut)
            break;
        at += NLMSG_ALIGN(mlen);
    }
    return found;
}

#define PG_CUT 0x80000000u /* pg_recv_many: the message was cut short */

/* Up to `max` waiting messages of any netlink socket, without blocking, each into its
 * `slot`-byte part of `buf`, their lengths into `lens` (MSG_TRUNC: the length is `slot` and
 * PG_CUT is set). The number of messages, or -errno (EAGAIN: none; ENOBUFS: the kernel dropped
 * messages, read again). */
int pg_recv_many(int fd, uint8_t *buf, uint32_t slot, int max, uint32_t *lens) {
    struct mmsghdr msgs[PG_MAX_BATCH];
    struct iovec iovs[PG_MAX_BATCH];
    int got;
    if (max > PG_MAX_BATCH)
        max = PG_MAX_BATCH;
    if (max <= 0)
        return 0;
    memset(msgs, 0, sizeof(struct mmsghdr) * (size_t)max);
    for (int i = 0; i < max; i++) {
        iovs[i].iov_base = buf + (size_t)i * slot;
        iovs[i].iov_len = slot;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    do {
        got = recvmmsg(fd, msgs, (unsigned int)max, MSG_DONTWAIT, NULL);
    } while (got < 0 && errno == EINTR);
    if (got < 0)
        return -errno;
    for (int i = 0; i < got; i++) {
        int cut = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
        lens[i] = cut ? (slot | PG_CUT) : msgs[i].msg_len;
    }
    return got;
}

/* Up to `max` waiting queue messages (pg_recv_many; ENOBUFS is counted and read past), the
 * packets' meta words into `meta`. The number of packets, or -errno (EAGAIN: none). */
int pg_recv(int fd, uint8_t *buf, uint32_t slot, int max, uint32_t *meta, uint32_t *counters) {
    uint32_t lens[PG_MAX_BATCH];
    int got, found = 0;
    if (max > PG_MAX_BATCH)
        max = PG_MAX_BATCH;
    while ((got = pg_recv_many(fd, buf, slot, max, lens)) == -ENOBUFS)
        counters[C_OVERRUNS]++; /* the kernel dropped messages: go on reading */
    if (got < 0)
        return got;
    counters[C_MESSAGES] += (uint32_t)got;
    for (int i = 0; i < got && found < max; i++) {
        uint32_t base = (uint32_t)((size_t)i * slot);
        found += pg_parse(buf + base, lens[i] & ~PG_CUT, base, (lens[i] & PG_CUT) != 0,
                          meta + (size_t)found * PG_META_WORDS, max - found, counters);
    }
    return found;
}

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* The verdict messages for `n` packets into `out` (room for n * PG_VERDICT_LEN bytes): words
 * per packet are id, netfilter verdict, whether to set the mark, the mark. The length. */
uint32_t pg_build(uint8_t *out, uint16_t queue, const uint32_t *verdicts, int n, uint32_t seq) {
    uint32_t at = 0;
    for (int i = 0; i < n; i++) {
        const uint32_t *v = verdicts + (size_t)i * 4;
        uint32_t len = v[2] ? PG_VERDICT_LEN : PG_VERDICT_LEN - 8;
        uint8_t *m = out + at;
        put32(m, len);
        put16(m + 4, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT);
        put16(m + 6, NLM_F_REQUEST);
        put32(m + 8, seq + (uint32_t)i);
        put32(m + 12, 0);
        m[16] = AF_UNSPEC;
        m[17] = 0; /* NFNETLINK_V0 */
        put16(m + 18, htons(queue));
        put16(m + 20, 12);
        put16(m + 22, NFQA_VERDICT_HDR);
        put32(m + 24, htonl(v[1]));
        put32(m + 28, htonl(v[0]));
        if (v[2]) {
            put16(m + 32, 8);
            put16(m + 34, NFQA_MARK);
            put32(m + 36, htonl(v[3]));
        }
        at += len;
    }
    return at;
}

/* Build and send the verdicts of `n` packets, PG_MAX_BATCH to a sendto(). 0, or -errno of the
 * first send that failed (the verdicts before it were sent). */
int pg_send(int fd, uint16_t queue, const uint32_t *verdicts, int n, uint32_t seq) {
    uint8_t out[PG_MAX_BATCH * PG_VERDICT_LEN];
    struct sockaddr_nl kernel;
    memset(&kernel, 0, sizeof(kernel));
    kernel.nl_family = AF_NETLINK;
    for (int done = 0; done < n;) {
        int part = n - done < PG_MAX_BATCH ? n - done : PG_MAX_BATCH;
        uint32_t len = pg_build(out, queue, verdicts + (size_t)done * 4, part, seq + (uint32_t)done);
        ssize_t sent;
        do {
            sent = sendto(fd, out, len, 0, (struct sockaddr *)&kernel, sizeof(kernel));
        } while (sent < 0 && errno == EINTR);
        if (sent < 0)
            return -errno;
        done += part;
    }
    return 0;
}

/* --- conntrack DESTROY events (portguard/io/ctevents.py) --------------------------------- */

/* Words of a parsed DESTROY message: the version, source and destination (4 words each, big
 * end first; IPv4 in the last), ports, protocol, mark, which parts were there, the counters and
 * times (high and low halves), the entry's id and zone. */
enum {
    CT_VERSION, CT_SRC, CT_DST = CT_SRC + 4, CT_SPORT = CT_DST + 4, CT_DPORT, CT_PROTO, CT_MARK,
    CT_HAS, CT_ORIG_PACKETS, CT_ORIG_BYTES = CT_ORIG_PACKETS + 2, CT_REPLY_PACKETS = CT_ORIG_BYTES + 2,
    CT_REPLY_BYTES = CT_REPLY_PACKETS + 2, CT_START = CT_REPLY_BYTES + 2, CT_STOP = CT_START + 2,
    CT_ID = CT_STOP + 2, CT_ZONE, CT_WORDS
};
enum { HAS_ORIG = 1, HAS_REPLY = 2, HAS_ID = 4, HAS_TUPLE = 8, HAS_PROTO = 16 };

#define CT_MAX_ATTR 32

typedef struct { uint32_t at, len; } span_t;

/* The attributes between `at` and `end`, by type (the last of a type wins, as in Python). */
static int attributes(const uint8_t *m, uint32_t at, uint32_t end, span_t *found) {
    memset(found, 0, sizeof(span_t) * CT_MAX_ATTR);
    while (at + 4 <= end) {
        uint16_t alen, atype;
        memcpy(&alen, m + at, 2);
        memcpy(&atype, m + at + 2, 2);
        if (alen < 4 || at + alen > end)
            return -1;
        atype &= ATTR_TYPE_MASK;
        if (atype < CT_MAX_ATTR) {
            found[atype].at = at + 4;
            found[atype].len = alen - 4u;
        }
        at += ALIGN4(alen);
    }
    return 0;
}

static int present(const span_t *s) { return s->at != 0; }

/* A big-endian number of up to 8 bytes (0 when absent), into two words (high, low). */
static int number64(const uint8_t *m, const span_t *s, uint32_t *out) {
    uint64_t v = 0;
    if (present(s)) {
        if (s->len > 8)
            return -1;
        for (uint32_t i = 0; i < s->len; i++)
            v = (v << 8) | m[s->at + i];
    }
    out[0] = (uint32_t)(v >> 32);
    out[1] = (uint32_t)v;
    return 0;
}

/* A big-endian number attribute of any length as one word (0 when absent): its low 32 bits,
 * as Python's reading masks them. `*wide` is set when the number itself is 2**32 or more
 * (Python reads a number no word holds). */
static uint32_t number32(const uint8_t *m, const span_t *s, int *wide) {
    uint32_t v = 0;
    for (uint32_t i = 0; present(s) && i < s->len; i++) {
        if (v >> 24)
            *wide = 1;
        v = (v << 8) | m[s->at + i];
    }
    return v;
}

/* An address attribute into 4 words, big end first (IPv4 in the last word). */
static int address(const uint8_t *m, const span_t *s, uint32_t *out) {
    memset(out, 0, 16);
    if (!present(s) || (s->len != 4 && s->len != 16))
        return -1;
    for (uint32_t i = 0; i < s->len / 4; i++)
        out[4 - s->len / 4 + i] = be32_at(m + s->at + 4 * i);
    return 0;
}

static int counters(const uint8_t *m, const span_t *s, uint32_t *packets, uint32_t *bytes) {
    span_t in[CT_MAX_ATTR];
    if (attributes(m, s->at, s->at + s->len, in) < 0)
        return -1;
    const span_t *p = present(&in[1]) ? &in[1] : &in[3]; /* CTA_COUNTERS_(32_)PACKETS */
    const span_t *b = present(&in[2]) ? &in[2] : &in[4]; /* CTA_COUNTERS_(32_)BYTES */
    return number64(m, p, packets) < 0 || number64(m, b, bytes) < 0 ? -1 : 0;
}

/* One DESTROY message (`len` bytes) into `w` (CT_WORDS words). -2: its attributes are
 * malformed; else the version (0: not IPv4/IPv6) and mark are filled in, and the result is
 * 1 for a TCP entry read whole, 0 for another protocol, -1 when a part it needs is missing or
 * malformed. Which verdict the mark holds is for the caller to judge. */
int pg_ct_parse(const uint8_t *m, uint32_t len, uint32_t *w) {
    span_t top[CT_MAX_ATTR], tuple[CT_MAX_ATTR], ip[CT_MAX_ATTR], proto[CT_MAX_ATTR];
    memset(w, 0, CT_WORDS * sizeof(uint32_t));
    if (len < NLMSG_HDRLEN + 1 || attributes(m, NLMSG_HDRLEN + 4, len, top) < 0)
        return -2;
    uint8_t family = m[NLMSG_HDRLEN];
    w[CT_VERSION] = family == AF_INET ? 4 : family == AF_INET6 ? 6 : 0;
    int wide = 0, wide_proto = 0; /* a number no word holds: -1 once the entry is TCP */
    w[CT_MARK] = number32(m, &top[8], &wide); /* CTA_MARK */
    if (!present(&top[1])) /* CTA_TUPLE_ORIG */
        return -1;
    if (attributes(m, top[1].at, top[1].at + top[1].len, tuple) < 0 || !present(&tuple[1]) ||
        !present(&tuple[2]))
        return -1;
    if (attributes(m, tuple[1].at, tuple[1].at + tuple[1].len, ip) < 0 ||
        attributes(m, tuple[2].at, tuple[2].at + tuple[2].len, proto) < 0)
        return -1;
    w[CT_PROTO] = number32(m, &proto[1], &wide_proto);
    if (w[CT_PROTO] != 6 || wide_proto)
        return 0;
    int v6 = w[CT_VERSION] == 6;
    if (address(m, &ip[v6 ? 3 : 1], w + CT_SRC) < 0 || address(m, &ip[v6 ? 4 : 2], w + CT_DST) < 0)
        return -1;
    if (!present(&proto[2]) || !present(&proto[3]))
        return -1;
    w[CT_SPORT] = number32(m, &proto[2], &wide);
    w[CT_DPORT] = number32(m, &proto[3], &wide);
    if (present(&top[9])) { /* CTA_COUNTERS_ORIG */
        if (counters(m, &top[9], w + CT_ORIG_PACKETS, w + CT_ORIG_BYTES) < 0)
            return -1;
        w[CT_HAS] |= HAS_ORIG;
    }
    if (present(&top[10])) { /* CTA_COUNTERS_REPLY */
        if (counters(m, &top[10], w + CT_REPLY_PACKETS, w + CT_REPLY_BYTES) < 0)
            return -1;
        w[CT_HAS] |= HAS_REPLY;
    }
    if (present(&top[20])) { /* CTA_TIMESTAMP */
        span_t t[CT_MAX_ATTR];
        if (attributes(m, top[20].at, top[20].at + top[20].len, t) < 0 ||
            number64(m, &t[1], w + CT_START) < 0 || number64(m, &t[2], w + CT_STOP) < 0)
            return -1;
    }
    if (present(&top[12])) { /* CTA_ID */
        w[CT_ID] = number32(m, &top[12], &wide);
        w[CT_HAS] |= HAS_ID;
    }
    w[CT_ZONE] = number32(m, &top[18], &wide); /* CTA_ZONE */
    return wide ? -1 : 1;
}

