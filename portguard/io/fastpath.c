/* The packet loop's fast path (compiled with nfqbatch.c into the same library; driven by
 * portguard/io/fastpath.py).
 *
 * An allow the policy gave an IPv4 connection without a rate limit depends only on the
 * connection's (source, destination, destination port, direction) and on what the policy in
 * force is: the Python gate (core/gate.py) teaches each such decision to a memo here
 * (pg_fast_learn), and pg_fast_decide answers the later SYNs of the same key itself, in the
 * batch's order up to the first packet the gate must decide (deciding it may change what the
 * memo may answer: a drop, a quarantine): it decodes them as decode_syn's inline case does
 * (IPv4 without options), writes their verdict words and their decision records (a
 * marshalled list of tuples, as the log hand-over carries them: log/handoff.py), and counts
 * the hits and flow ids the gate would have. Every other packet is left to Python: IPv6, IP options, a key not learnt, an interface not known, or a 5-tuple that
 * may repeat a SYN the gate dropped less than the retransmission window ago (two rotating
 * Bloom filters of the dropped 5-tuples: no false negative within the window; a false positive
 * only costs the Python path).
 *
 * The memo is valid for one generation: the Python side starts a new one (pg_fast_flush)
 * whenever anything an allow depends on changes (a reload, a quarantine added). The interface
 * table only says which side a packet comes from and goes to (the direction, part of the key).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>

#define MAX_INTERFACES 64
#define MAX_TEXTS 4096
#define ARENA (1u << 20)
#define MEMO_SLOTS (1u << 16)
#define MEMO_PROBES 8
#define BLOOM_BITS (1u << 22)
#define PREFIX_SIZE 64
#define RECORD_FIELDS 15

enum { M_ID, M_MARK, M_INDEV, M_OUTDEV, M_OFF, M_LEN, M_FLAGS, META_WORDS };
enum { F_PAYLOAD = 1 };
enum { NF_REPEAT = 4 };

typedef struct {
    uint32_t src, dst, generation, text; /* text: index + 1 (0: an empty slot) */
    uint16_t dport;
    uint8_t direction, unused;
} memo_t;

typedef struct {
    uint32_t mark_bits, at, size; /* the verdict's mark bits; its record's middle fields */
    uint32_t unused;
    uint64_t hits;
} text_t;

typedef struct {
    uint32_t generation, interfaces, texts, arena_used, prefix_size, bloom_current;
    uint32_t kept_mask;   /* the bits of a packet's mark that are not portguard's */
    uint32_t unused;
    double window;        /* the retransmission window (seconds) */
    double bloom_rotated; /* when the current Bloom filter became current */
    uint32_t ifindex[MAX_INTERFACES];
    uint8_t wan[MAX_INTERFACES];
    char prefix[PREFIX_SIZE]; /* the flow ids' prefix */
    text_t text[MAX_TEXTS];
    uint8_t arena[ARENA];
    memo_t memo[MEMO_SLOTS];
    uint8_t bloom[2][BLOOM_BITS / 8];
} pg_fast;

uint32_t pg_fast_size(void) { return (uint32_t)sizeof(pg_fast); }

/* A fresh state (in memory the caller owns, `pg_fast_size()` bytes). 0, or -1 for a prefix
 * too long. */
int pg_fast_init(pg_fast *f, const char *prefix, uint32_t prefix_size, uint32_t kept_mask,
                 double window) {
    if (prefix_size > PREFIX_SIZE)
        return -1;
    memset(f, 0, sizeof *f);
    memcpy(f->prefix, prefix, prefix_size);
    f->prefix_size = prefix_size;
    f->kept_mask = kept_mask;
    f->window = window;
    f->generation = 1;
    return 0;
}

/* A new generation: every learnt key and text forgotten (the hits are the caller's to take
 * first). */
void pg_fast_flush(pg_fast *f) {
    f->generation++;
    f->texts = 0;
    f->arena_used = 0;
}

/* The interfaces known, and which are WAN interfaces. The memo stays: what it learnt is by
 * direction, and a packet's direction is taken from this table each time. */
int pg_fast_interfaces(pg_fast *f, const uint32_t *ifindex, const uint8_t *wan, uint32_t count) {
    if (count > MAX_INTERFACES)
        count = MAX_INTERFACES; /* the others are left to Python */
    memcpy(f->ifindex, ifindex, count * sizeof *ifindex);
    memcpy(f->wan, wan, count);
    f->interfaces = count;
    return (int)count;
}

/* What a decision writes: its mark bits and the marshalled middle fields of its record (from
 * the direction to the policy version). Its index, or -1 when the texts are full. */
int pg_fast_text(pg_fast *f, uint32_t mark_bits, const uint8_t *fields, uint32_t size) {
    if (f->texts >= MAX_TEXTS || size > ARENA - f->arena_used)
        return -1;
    text_t *t = &f->text[f->texts];
    t->mark_bits = mark_bits;
    t->at = f->arena_used;
    t->size = size;
    t->hits = 0;
    memcpy(f->arena + f->arena_used, fields, size);
    f->arena_used += size;
    return (int)f->texts++;
}

/* The decisions answered here since the last call, by text (`out`: `room` counts); zeroed. */
uint32_t pg_fast_take_hits(pg_fast *f, uint64_t *out, uint32_t room) {
    uint32_t n = f->texts < room ? f->texts : room;
    for (uint32_t i = 0; i < n; i++) {
        out[i] = f->text[i].hits;
        f->text[i].hits = 0;
    }
    return n;
}

static uint64_t mix(uint64_t x) { /* splitmix64's finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint32_t memo_slot(uint32_t src, uint32_t dst, uint32_t dport, uint32_t direction) {
    uint64_t h = mix((uint64_t)src << 32 | dst) ^ mix((uint64_t)dport << 8 | direction);
    return (uint32_t)(mix(h) & (MEMO_SLOTS - 1));
}

/* Teach the memo an allow: the key and the text its SYNs get. */
int pg_fast_learn(pg_fast *f, uint32_t src, uint32_t dst, uint32_t dport, uint32_t direction,
                  uint32_t text) {
    if (text >= f->texts || dport > 0xFFFF || direction > 0xFF)
        return -1;
    uint32_t slot = memo_slot(src, dst, dport, direction), chosen = slot;
    for (uint32_t probe = 0; probe < MEMO_PROBES; probe++) {
        memo_t *m = &f->memo[(slot + probe) & (MEMO_SLOTS - 1)];
        int same = m->src == src && m->dst == dst && m->dport == dport &&
                   m->direction == direction;
        if (m->generation != f->generation || !m->text || same) {
            chosen = (slot + probe) & (MEMO_SLOTS - 1);
            break;
        }
    }
    memo_t *m = &f->memo[chosen]; /* all probes taken: the first is replaced */
    m->src = src;
    m->dst = dst;
    m->dport = (uint16_t)dport;
    m->direction = (uint8_t)direction;
    m->generation = f->generation;
    m->text = text + 1;
    return 0;
}

static const memo_t *memo_find(const pg_fast *f, uint32_t src, uint32_t dst, uint32_t dport,
                               uint32_t direction) {
    uint32_t slot = memo_slot(src, dst, dport, direction);
    for (uint32_t probe = 0; probe < MEMO_PROBES; probe++) {
        const memo_t *m = &f->memo[(slot + probe) & (MEMO_SLOTS - 1)];
        if (m->generation == f->generation && m->text && m->src == src && m->dst == dst &&
            m->dport == dport && m->direction == direction)
            return m;
    }
    return NULL;
}

/* --- the dropped 5-tuples ---------------------------------------------------------------- */

/* A filter holds a drop for more than the window: it is cleared at the second rotation after
 * the drop, and rotations are more than the window apart. */
static void bloom_rotate(pg_fast *f, double now) {
    if (!(now - f->bloom_rotated > f->window))
        return;
    f->bloom_current ^= 1;
    memset(f->bloom[f->bloom_current], 0, sizeof f->bloom[0]);
    f->bloom_rotated = now;
}

static void bloom_bits(uint32_t src, uint32_t dst, uint32_t sport, uint32_t dport,
                       uint32_t bits[2]) {
    uint64_t h = mix(mix((uint64_t)src << 32 | dst) ^ ((uint64_t)sport << 16 | dport));
    bits[0] = (uint32_t)h & (BLOOM_BITS - 1);
    bits[1] = (uint32_t)(h >> 32) & (BLOOM_BITS - 1);
}

/* A SYN the gate dropped at `now`: its retransmissions are left to Python for the window. */
void pg_fast_drop(pg_fast *f, uint32_t src, uint32_t dst, uint32_t sport, uint32_t dport,
                  double now) {
    bloom_rotate(f, now);
    uint32_t bits[2];
    bloom_bits(src, dst, sport, dport, bits);
    uint8_t *b = f->bloom[f->bloom_current];
    for (int i = 0; i < 2; i++)
        b[bits[i] >> 3] |= (uint8_t)(1u << (bits[i] & 7));
}

static int maybe_dropped(const pg_fast *f, uint32_t src, uint32_t dst, uint32_t sport,
                         uint32_t dport) {
    uint32_t bits[2];
    bloom_bits(src, dst, sport, dport, bits);
    for (int g = 0; g < 2; g++) {
        const uint8_t *b = f->bloom[g];
        if ((b[bits[0] >> 3] >> (bits[0] & 7) & 1) && (b[bits[1] >> 3] >> (bits[1] & 7) & 1))
            return 1;
    }
    return 0;
}

/* --- a record, marshalled ------------------------------------------------------------------ */

typedef struct {
    uint8_t *at, *end;
} writer_t;

static int room(const writer_t *w, uint32_t n) { return (size_t)(w->end - w->at) >= n; }

static void put_u32le(uint8_t *at, uint32_t v) {
    at[0] = (uint8_t)v;
    at[1] = (uint8_t)(v >> 8);
    at[2] = (uint8_t)(v >> 16);
    at[3] = (uint8_t)(v >> 24);
}

/* a non-negative int below 2^32 as marshal writes it: 'i' below 2^31, else 'l' with three
 * 15-bit digits */
static void put_int(writer_t *w, uint32_t v) {
    if (v < 0x80000000u) {
        *w->at++ = 'i';
        put_u32le(w->at, v);
        w->at += 4;
        return;
    }
    *w->at++ = 'l';
    put_u32le(w->at, 3);
    w->at += 4;
    for (int i = 0; i < 3; i++) {
        uint32_t digit = v >> (15 * i) & 0x7FFF;
        *w->at++ = (uint8_t)digit;
        *w->at++ = (uint8_t)(digit >> 8);
    }
}

static const char HEX[] = "0123456789abcdef";

/* One record: (now, 4, src, dst, sport, dport, <the text's fields>, flow id, None). 0, or -1
 * when it does not fit. */
static int put_record(writer_t *w, const pg_fast *f, const text_t *t, double now, uint32_t src,
                      uint32_t dst, uint32_t sport, uint32_t dport, uint64_t flow) {
    char digits[16];
    int n = 0;
    do {
        digits[15 - n++] = HEX[flow & 15];
        flow >>= 4;
    } while (flow);
    uint32_t id_size = f->prefix_size + (uint32_t)n;
    if (!room(w, 2 + 9 + 5 + 2 * 15 + 2 * 5 + t->size + 5 + id_size + 1))
        return -1;
    *w->at++ = ')';
    *w->at++ = RECORD_FIELDS;
    *w->at++ = 'g';
    memcpy(w->at, &now, 8); /* little-endian, as marshal writes it */
    w->at += 8;
    put_int(w, 4);
    put_int(w, src);
    put_int(w, dst);
    put_int(w, sport);
    put_int(w, dport);
    memcpy(w->at, f->arena + t->at, t->size);
    w->at += t->size;
    *w->at++ = 'a';
    put_u32le(w->at, id_size);
    w->at += 4;
    memcpy(w->at, f->prefix, f->prefix_size);
    w->at += f->prefix_size;
    memcpy(w->at, digits + 16 - n, (size_t)n);
    w->at += n;
    *w->at++ = 'N';
    return 0;
}

/* --- deciding --------------------------------------------------------------------------- */

static int interface(const pg_fast *f, uint32_t ifindex) {
    if (ifindex == 0)
        return 0; /* no interface: not a WAN one (interfaces.py) */
    for (uint32_t i = 0; i < f->interfaces; i++)
        if (f->ifindex[i] == ifindex)
            return f->wan[i];
    return -1;
}

static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static uint32_t be32(const uint8_t *p) { return be16(p) << 16 | be16(p + 2); }

/* `direction_of` as core/gate.py's _DIRECTIONS numbers them: (arrives on WAN, leaves on WAN)
 * -> 0 external (both), 1 outbound (leaves), 2 inbound (arrives), 3 internal (neither) */
static int direction_of(int arrives, int leaves) {
    if (arrives)
        return leaves ? 0 : 2;
    return leaves ? 1 : 3;
}

/* The text of the memo's answer to a queued packet (its fields into `k`), or NULL when the
 * gate must decide it. */
typedef struct {
    uint32_t src, dst, sport, dport;
} syn_t;

static text_t *answerable(pg_fast *f, const uint8_t *buf, const uint32_t *m, syn_t *k) {
    if (!(m[M_FLAGS] & F_PAYLOAD) || m[M_LEN] < 40)
        return NULL;
    const uint8_t *p = buf + m[M_OFF];
    uint32_t total = be16(p + 2), tcp = (uint32_t)(p[32] >> 4) * 4;
    uint32_t end = total < m[M_LEN] ? total : m[M_LEN];
    if (p[0] != 0x45 || total < 40 || (be16(p + 6) & 0x1FFF) || p[9] != 6 || tcp < 20 ||
        tcp > end - 20)
        return NULL; /* decode_syn's inline case only */
    int arrives = interface(f, m[M_INDEV]), leaves = interface(f, m[M_OUTDEV]);
    if (arrives < 0 || leaves < 0)
        return NULL;
    k->src = be32(p + 12);
    k->dst = be32(p + 16);
    k->sport = be16(p + 20);
    k->dport = be16(p + 22);
    const memo_t *found = memo_find(f, k->src, k->dst, k->dport,
                                    (uint32_t)direction_of(arrives, leaves));
    if (!found || maybe_dropped(f, k->src, k->dst, k->sport, k->dport))
        return NULL;
    return &f->text[found->text - 1];
}

/* The packets of a batch (`count` entries of META_WORDS in `meta`, payloads in `buf`) this
 * memo answers, from `start` on and in order, up to the first the gate must decide (which
 * may change what the memo knows): for each, four verdict words (id, NF_REPEAT, 1, mark) in
 * `verdicts`, its record appended to the marshalled list in `records` (`cap` bytes; `*size`
 * its length), `*decided` counting the flow ids. The number answered; `*next` the first packet
 * after the one that stopped it that the memo could answer now (`count`: none). */
int pg_fast_decide(pg_fast *f, const uint8_t *buf, const uint32_t *meta, uint32_t start,
                   uint32_t count, double now, uint32_t *verdicts, uint8_t *records,
                   uint32_t cap, uint32_t *size, uint64_t *decided, uint32_t *next) {
    writer_t w = {records, records + cap};
    uint32_t answered = 0, i = start;
    syn_t k;
    *size = 0;
    *next = count;
    if (cap < 5)
        return 0;
    *w.at++ = '[';
    w.at += 4; /* the count, once known */
    bloom_rotate(f, now);
    for (; i < count; i++) {
        const uint32_t *m = meta + (size_t)i * META_WORDS;
        text_t *t = answerable(f, buf, m, &k);
        if (!t || put_record(&w, f, t, now, k.src, k.dst, k.sport, k.dport, *decided + 1))
            break;
        ++*decided;
        t->hits++;
        uint32_t *v = verdicts + (size_t)answered * 4;
        v[0] = m[M_ID];
        v[1] = NF_REPEAT;
        v[2] = 1;
        v[3] = (m[M_MARK] & f->kept_mask) | t->mark_bits;
        answered++;
    }
    for (uint32_t j = i + 1; j < count; j++) {
        if (answerable(f, buf, meta + (size_t)j * META_WORDS, &k)) {
            *next = j;
            break;
        }
    }
    put_u32le(records + 1, answered);
    *size = answered ? (uint32_t)(w.at - records) : 0;
    return (int)answered;
}
