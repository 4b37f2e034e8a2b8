/* Flow-end events rendered in C (compiled with nfqbatch.c into the same library; loaded by
 * portguard/io/native.py, used by portguard/io/ctparse.py's FlowEndLines).
 *
 * pg_ct_line reads one conntrack DESTROY message (pg_ct_parse) and, for an allowed TCP
 * connection, writes its ECS flow-end line: byte for byte what portguard/core/events/lines.py
 * renders and orjson writes for portguard/core/events/flowend.py's event (the unit tests hold
 * the three to each other). Python hands over what is the same for every line, already as
 * JSON: the event's fixed head (ecs, log, event's fixed fields), the four directions by their
 * mark bits and the observer. The line carries the time of the call (CLOCK_REALTIME), which is
 * also written into the words so that the event's dict can be built later exactly alike.
 *
 * The Community ID (SHA-1 of the ordered endpoints, base64) is computed here: SHA-1 as FIPS
 * 180-4 gives it, for the one or two blocks a flow's 40 bytes need.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "lines.h"

int pg_ct_parse(const uint8_t *m, uint32_t len, uint32_t *w);

/* nfqbatch.c's words of a parsed DESTROY message, and the two this file adds */
enum {
    W_VERSION = 0, W_SRC = 1, W_DST = 5, W_SPORT = 9, W_DPORT = 10, W_MARK = 12, W_HAS = 13,
    W_ORIG = 14, W_REPLY = 18, W_START = 22, W_STOP = 24, W_NOW_S = 28, W_NOW_US = 29
};
enum { HAS_ORIG = 1, HAS_REPLY = 2 };
enum { NO_EVENT = 1 };
#define CT_WORDS 32        /* words a message takes (native.py's CT_WORDS) */
#define PG_CUT 0x80000000u /* pg_recv_many: a datagram cut short */
#define DESTROY_TYPE (1 << 8 | 2) /* NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE */

/* --- SHA-1 ------------------------------------------------------------------------------- */

static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1_block(uint32_t h[5], const uint8_t *block) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
               (uint32_t)block[4 * i + 2] << 8 | block[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define PG_SHA_NI 1

/* The same block with the SHA extensions (Intel's, also AMD's since Zen): four rounds an
 * instruction. W_i, the i-th group of four schedule words, is kept in w[i % 4]; E for a group
 * comes from A four rounds back (sha1nexte). */
__attribute__((target("sha,sse4.1,ssse3"))) static void sha1_block_ni(uint32_t h[5],
                                                                      const uint8_t *block) {
    const __m128i swap = _mm_set_epi64x(0x0001020304050607LL, 0x08090a0b0c0d0e0fLL);
    const __m128i abcd_in = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0x1B);
    const __m128i e_in = _mm_set_epi32((int)h[4], 0, 0, 0);
    __m128i w[4], abcd = abcd_in, before = abcd_in, e = e_in;
    for (int i = 0; i < 4; i++)
        w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 16 * i)), swap);
    for (int i = 0; i < 20; i++) {
        if (i >= 4)
            w[i % 4] = _mm_sha1msg2_epu32(
                _mm_xor_si128(_mm_sha1msg1_epu32(w[i % 4], w[(i + 1) % 4]), w[(i + 2) % 4]),
                w[(i + 3) % 4]);
        e = i == 0 ? _mm_add_epi32(e, w[0]) : _mm_sha1nexte_epu32(before, w[i % 4]);
        before = abcd;
        switch (i / 5) { /* the round function: an immediate */
        case 0: abcd = _mm_sha1rnds4_epu32(abcd, e, 0); break;
        case 1: abcd = _mm_sha1rnds4_epu32(abcd, e, 1); break;
        case 2: abcd = _mm_sha1rnds4_epu32(abcd, e, 2); break;
        default: abcd = _mm_sha1rnds4_epu32(abcd, e, 3); break;
        }
    }
    e = _mm_sha1nexte_epu32(before, e_in);
    abcd = _mm_shuffle_epi32(_mm_add_epi32(abcd, abcd_in), 0x1B);
    _mm_storeu_si128((__m128i *)h, abcd);
    h[4] = (uint32_t)_mm_extract_epi32(e, 3);
}

/* 1 when the CPU has the SHA extensions (CPUID leaf 7: EBX bit 29) and SSE4.1 */
static int has_sha_ni(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1) || !(c & bit_SSSE3))
        return 0;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 29));
}
#endif

typedef void (*sha1_block_fn)(uint32_t h[5], const uint8_t *block);

/* the block function: 0 the portable one, 1 the SHA extensions' (none: NULL) */
static sha1_block_fn sha1_impl(int which) {
    if (which == 0)
        return sha1_block;
#ifdef PG_SHA_NI
    if (which == 1 && has_sha_ni())
        return sha1_block_ni;
#endif
    return NULL;
}

static sha1_block_fn chosen_block; /* the fastest this CPU has, found on first use */

/* SHA-1 of `len` (< 56 + 64) bytes into `digest` (20 bytes) with `block`. */
static void sha1_with(sha1_block_fn block, const uint8_t *data, uint32_t len, uint8_t digest[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    uint8_t padded[128] = {0};
    memcpy(padded, data, len);
    padded[len] = 0x80;
    uint32_t total = len + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        padded[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (uint32_t at = 0; at < total; at += 64)
        block(h, padded + at);
    for (int i = 0; i < 5; i++) {
        digest[4 * i] = (uint8_t)(h[i] >> 24);
        digest[4 * i + 1] = (uint8_t)(h[i] >> 16);
        digest[4 * i + 2] = (uint8_t)(h[i] >> 8);
        digest[4 * i + 3] = (uint8_t)h[i];
    }
}

static void sha1(const uint8_t *data, uint32_t len, uint8_t digest[20]) {
    if (chosen_block == NULL) { /* a race sets it twice, alike */
        sha1_block_fn ni = sha1_impl(1);
        chosen_block = ni != NULL ? ni : sha1_block;
    }
    sha1_with(chosen_block, data, len, digest);
}

/* For the tests: SHA-1 of `len` (< 120) bytes with implementation `which` (0 portable, 1 the
 * SHA extensions); -1 when this CPU or build has no such implementation. */
int pg_sha1(const uint8_t *data, uint32_t len, uint8_t *digest, int which) {
    sha1_block_fn block = sha1_impl(which);
    if (block == NULL || len >= 120)
        return -1;
    sha1_with(block, data, len, digest);
    return 0;
}

static const char BASE64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* base64 of 20 bytes: 28 characters (one '=' of padding), no terminator. */
static void base64_20(const uint8_t *in, char *out) {
    int o = 0;
    for (int i = 0; i < 18; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = BASE64[v >> 18 & 63];
        out[o++] = BASE64[v >> 12 & 63];
        out[o++] = BASE64[v >> 6 & 63];
        out[o++] = BASE64[v & 63];
    }
    uint32_t v = (uint32_t)in[18] << 16 | (uint32_t)in[19] << 8;
    out[o++] = BASE64[v >> 18 & 63];
    out[o++] = BASE64[v >> 12 & 63];
    out[o++] = BASE64[v >> 6 & 63];
    out[o] = '=';
}

/* --- the line ---------------------------------------------------------------------------- */

PG_HIDDEN void put(out_t *o, const char *s, size_t n) {
    if (o->full || (size_t)(o->end - o->at) < n) {
        o->full = 1;
        return;
    }
    memcpy(o->at, s, n);
    o->at += n;
}

PG_HIDDEN void puts_(out_t *o, const char *s) { put(o, s, strlen(s)); }

PG_HIDDEN void put_u64(out_t *o, uint64_t v) {
    char text[24];
    int n = 0;
    do {
        text[sizeof text - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, text + sizeof text - n, (size_t)n);
}

static void digits(char *at, uint32_t v, int n) {
    while (n--) {
        at[n] = (char)('0' + v % 10);
        v /= 10;
    }
}

/* ECS time of whole seconds (0 up to year 9999) and microseconds:
 * 2026-12-05T15:09:24.123456Z. The date from the days since 1970 by the proleptic Gregorian
 * calendar's 400-year eras (as `datetime` counts them). */
PG_HIDDEN void put_time(out_t *o, uint64_t seconds, uint32_t micro) {
    uint64_t days = seconds / 86400, rest = seconds % 86400;
    uint64_t z = days + 719468, era = z / 146097, doe = z - era * 146097;
    uint64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    uint64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    uint32_t day = (uint32_t)(doy - (153 * mp + 2) / 5 + 1);
    uint32_t month = (uint32_t)(mp < 10 ? mp + 3 : mp - 9);
    uint32_t year = (uint32_t)(yoe + era * 400 + (month <= 2));
    char text[27];
    digits(text, year, 4);
    text[4] = '-';
    digits(text + 5, month, 2);
    text[7] = '-';
    digits(text + 8, day, 2);
    text[10] = 'T';
    digits(text + 11, (uint32_t)(rest / 3600), 2);
    text[13] = ':';
    digits(text + 14, (uint32_t)(rest / 60 % 60), 2);
    text[16] = ':';
    digits(text + 17, (uint32_t)(rest % 60), 2);
    text[19] = '.';
    digits(text + 20, micro, 6);
    text[26] = 'Z';
    put(o, text, sizeof text);
}

static void put_time_ns(out_t *o, uint64_t ns) {
    put_time(o, ns / 1000000000u, (uint32_t)(ns % 1000000000u / 1000u));
}

static uint64_t wide(const uint32_t *w, int at) { return (uint64_t)w[at] << 32 | w[at + 1]; }

static void address_bytes(const uint32_t *w, int at, int size, uint8_t *out) {
    for (int i = 0; i < size / 4; i++) {
        uint32_t v = htonl(w[at + 4 - size / 4 + i]);
        memcpy(out + 4 * i, &v, 4);
    }
}

PG_HIDDEN void put_ip(out_t *o, int version, const uint8_t *raw) {
    if (version == 4) { /* dotted quad, as inet_ntop writes it */
        for (int i = 0; i < 4; i++) {
            if (i)
                put(o, ".", 1);
            put_u64(o, raw[i]);
        }
        return;
    }
    char text[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, raw, text, sizeof text);
    puts_(o, text);
}

/* "1:" + base64(SHA-1(seed 0, the endpoints in order, protocol 6, a pad byte, the ports)) */
PG_HIDDEN void put_community_id(out_t *o, const uint8_t *src, const uint8_t *dst, int size,
                             uint16_t sport, uint16_t dport) {
    int cmp = memcmp(src, dst, (size_t)size);
    if (cmp > 0 || (cmp == 0 && sport > dport)) {
        const uint8_t *a = src;
        uint16_t p = sport;
        src = dst;
        dst = a;
        sport = dport;
        dport = p;
    }
    uint8_t data[2 + 32 + 6], digest[20];
    uint32_t n = 0;
    data[n++] = 0;
    data[n++] = 0;
    memcpy(data + n, src, (size_t)size);
    n += (uint32_t)size;
    memcpy(data + n, dst, (size_t)size);
    n += (uint32_t)size;
    data[n++] = 6;
    data[n++] = 0;
    data[n++] = (uint8_t)(sport >> 8);
    data[n++] = (uint8_t)sport;
    data[n++] = (uint8_t)(dport >> 8);
    data[n++] = (uint8_t)dport;
    sha1(data, n, digest);
    char text[30] = "1:";
    base64_20(digest, text + 2);
    put(o, text, 30);
}

/* `opening`, then an endpoint's address and port, and what it sent when `counters` (packets
 * and bytes, two words each) are given. */
static void put_endpoint(out_t *o, const char *opening, int version, const uint8_t *raw,
                         uint16_t port, const uint32_t *counters) {
    puts_(o, opening);
    put_ip(o, version, raw);
    puts_(o, "\",\"port\":");
    put_u64(o, port);
    if (counters) {
        puts_(o, ",\"packets\":");
        put_u64(o, wide(counters, 0));
        puts_(o, ",\"bytes\":");
        put_u64(o, wide(counters, 2));
    }
}

/* What every line shares (the caller's, set once): which marks are portguard's allow and
 * where their direction is; `head`: the JSON between the timestamp and the times;
 * `directions`: 4 JSON strings of 16 bytes each (NUL-padded) by the mark's direction bits
 * (`mark & direction_mask`, shifted down by `direction_shift`); `observer`: the observer's
 * fields as JSON without the braces. */
typedef struct {
    uint32_t verdict_mask, allow, direction_mask, direction_shift;
    const char *head, *directions, *observer;
} pg_line_form;

/* One DESTROY message (`len` bytes) into the words `w` and, for an allowed TCP connection, its
 * flow-end line into `o`. OK, or: NO_EVENT (not portguard's allow mark, not TCP, not IPv4/IPv6),
 * -1 a part it needs is missing or a port is wider than 16 bits, -2 malformed attributes. */
static int ct_line(const uint8_t *m, uint32_t len, uint32_t *w, const pg_line_form *form,
                   out_t *o) {
    int parsed = pg_ct_parse(m, len, w);
    if (parsed == -2)
        return -2;
    if (!w[W_VERSION] || (w[W_MARK] & form->verdict_mask) != form->allow)
        return NO_EVENT;
    if (parsed < 0)
        return parsed;
    if (parsed == 0)
        return NO_EVENT;
    if (w[W_SPORT] > 0xFFFF || w[W_DPORT] > 0xFFFF) /* no TCP port: no Community ID either */
        return -1;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    w[W_NOW_S] = (uint32_t)now.tv_sec;
    w[W_NOW_US] = (uint32_t)(now.tv_nsec / 1000);

    int version = (int)w[W_VERSION], size = version == 4 ? 4 : 16;
    uint8_t src[16], dst[16];
    address_bytes(w, W_SRC, size, src);
    address_bytes(w, W_DST, size, dst);
    uint16_t sport = (uint16_t)w[W_SPORT], dport = (uint16_t)w[W_DPORT];
    uint64_t start = wide(w, W_START), stop = wide(w, W_STOP);
    int counted = (w[W_HAS] & HAS_ORIG) && (w[W_HAS] & HAS_REPLY);
    const char *direction =
        form->directions + 16 * ((w[W_MARK] & form->direction_mask) >> form->direction_shift);

    puts_(o, "{\"@timestamp\":\"");
    put_time(o, w[W_NOW_S], w[W_NOW_US]);
    puts_(o, "\",");
    puts_(o, form->head);
    if (start) {
        puts_(o, ",\"start\":\"");
        put_time_ns(o, start);
        puts_(o, "\"");
        if (stop && stop >= start) {
            puts_(o, ",\"end\":\"");
            put_time_ns(o, stop);
            puts_(o, "\",\"duration\":");
            put_u64(o, stop - start);
        }
    }
    put_endpoint(o, "},\"source\":{\"ip\":\"", version, src, sport, counted ? w + W_ORIG : NULL);
    put_endpoint(o, "},\"destination\":{\"ip\":\"", version, dst, dport,
                 counted ? w + W_REPLY : NULL);
    puts_(o, "},\"network\":{\"transport\":\"tcp\",\"iana_number\":\"6\",\"type\":");
    puts_(o, version == 4 ? "\"ipv4\",\"direction\":" : "\"ipv6\",\"direction\":");
    puts_(o, direction);
    if (counted) {
        puts_(o, ",\"packets\":");
        put_u64(o, wide(w, W_ORIG) + wide(w, W_REPLY));
        puts_(o, ",\"bytes\":");
        put_u64(o, wide(w, W_ORIG + 2) + wide(w, W_REPLY + 2));
    }
    puts_(o, ",\"community_id\":\"");
    put_community_id(o, src, dst, size, sport, dport);
    puts_(o, "\"},\"observer\":{");
    puts_(o, form->observer);
    puts_(o, "}}");
    return 0;
}

/* One DESTROY message (`len` bytes) into the words `w` and, for an allowed TCP connection, its
 * flow-end line into `out` (`cap` bytes). The line's length, or: 0 no event (not portguard's
 * allow mark, not TCP, not IPv4/IPv6), -1 a part it needs is missing or a port is wider than
 * 16 bits, -2 malformed attributes, -3 the line does not fit. */
int pg_ct_line(const uint8_t *m, uint32_t len, uint32_t *w, const pg_line_form *form, char *out,
               uint32_t cap) {
    out_t o = {out, out + cap, 0};
    int found = ct_line(m, len, w, form, &o);
    if (found == NO_EVENT)
        return 0;
    if (found < 0)
        return found;
    return o.full ? -3 : (int)(o.at - out);
}

/* counts pg_ct_lines keeps in `tally` */
enum { T_MESSAGES, T_FAILURES, T_LAST_FAILURE };

static void failed(uint32_t *tally, int code) {
    tally[T_FAILURES]++;
    tally[T_LAST_FAILURE] = (uint32_t)-code;
}

/* The flow-end lines of one pg_recv_many read: `count` datagrams, the i-th at `slots + i * slot`
 * and `lengths[i]` long. Each DESTROY message in them is read as pg_ct_line reads it; a line
 * goes into `out` (`cap` bytes) ended by a newline, where it ends into `ends` and its words into
 * `words` (CT_WORDS each, `room` lines at most). `tally` counts the DESTROY messages and the
 * failures, and keeps the last one's code (1 and 2 as pg_ct_line's -1 and -2, 4 a malformed
 * netlink message: the rest of its datagram is skipped, 5 a datagram cut short: skipped).
 * The number of lines, or -3 when `out` or the room for lines is too small (read it again
 * message by message). */
int pg_ct_lines(const uint8_t *slots, uint32_t slot, const uint32_t *lengths, uint32_t count,
                const pg_line_form *form, char *out, uint32_t cap, uint32_t *ends,
                uint32_t *words, uint32_t room, uint32_t *tally) {
    out_t o = {out, out + cap, 0};
    uint32_t lines = 0;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *data = slots + (size_t)i * slot;
        uint32_t size = lengths[i], at = 0;
        if (size & PG_CUT) {
            failed(tally, -5);
            continue;
        }
        while (at + 16 <= size) {
            uint32_t mlen;
            uint16_t type;
            memcpy(&mlen, data + at, 4);
            memcpy(&type, data + at + 4, 2);
            if (mlen < 16 || mlen > size - at) {
                failed(tally, -4);
                break;
            }
            if (type == DESTROY_TYPE) {
                tally[T_MESSAGES]++;
                if (lines >= room)
                    return -3;
                uint32_t *w = words + (size_t)lines * CT_WORDS;
                char *begin = o.at;
                int found = ct_line(data + at, mlen, w, form, &o);
                if (found == 0) {
                    put(&o, "\n", 1);
                    if (o.full)
                        return -3;
                    ends[lines++] = (uint32_t)(o.at - out);
                } else if (found != NO_EVENT) {
                    o.at = begin;
                    failed(tally, found);
                }
            }
            at += (mlen + 3) & ~3u;
        }
    }
    return (int)lines;
}
