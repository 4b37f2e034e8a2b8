/* Batched reads and verdicts on an NFQUEUE netlink socket (portguard/io/batchqueue.py).
 *
 * python-netfilterqueue binds the queue; this reads its socket and answers it in batches:
 * one recvmmsg() for up to `max` queued packets, one sendto() for all their verdicts (the
 * kernel's nfnetlink handles every message of a buffer in turn). Loaded with ctypes; no
 * Python API, no allocation, no state: the caller owns every buffer.
 *
 * Meta words per packet (host byte order), see batchqueue.py: id, mark, indev, outdev,
 * payload offset (into the receive buffer), payload length, flags.
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

/* Up to `max` waiting messages, without blocking, each into its `slot`-byte part of `buf`;
 * the packets' meta words into `meta`. The number of packets, or -errno (EAGAIN: none). */
int pg_recv(int fd, uint8_t *buf, uint32_t slot, int max, uint32_t *meta, uint32_t *counters) {
    struct mmsghdr msgs[PG_MAX_BATCH];
    struct iovec iovs[PG_MAX_BATCH];
    int got, found = 0;
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
    for (;;) {
        got = recvmmsg(fd, msgs, (unsigned int)max, MSG_DONTWAIT, NULL);
        if (got >= 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == ENOBUFS) { /* the kernel dropped messages: go on reading */
            counters[C_OVERRUNS]++;
            continue;
        }
        return -errno;
    }
    counters[C_MESSAGES] += (uint32_t)got;
    for (int i = 0; i < got && found < max; i++) {
        uint32_t base = (uint32_t)((size_t)i * slot);
        int cut = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
        found += pg_parse(buf + base, msgs[i].msg_len, base, cut,
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
