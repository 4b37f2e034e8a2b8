/* Decision events rendered in C (compiled with nfqbatch.c and flowlines.c into the same
 * library; used by portguard/io/decisionlines.py's DecisionLines).
 *
 * The packet loop hands its log process each run of decision records as one marshalled list of
 * tuples (portguard/log/handoff.py, an `r` frame). pg_decision_lines reads that payload and
 * writes every record's ECS line, each ended by a newline: byte for byte what
 * portguard/core/events/lines.py's LineRenderer.decision writes (the unit tests hold the two to
 * each other). It reads the part of marshal's format (version 4, Python 3.4 and later) such a
 * list uses: a list, tuples, ints, floats, strings, None and back-references to earlier values.
 * Anything else makes it give up on the whole payload and the caller renders it in Python: a
 * record with a rate limit's fields (a dict), a value out of range, a string that is not
 * well-formed UTF-8 (a lone surrogate), a type it does not read.
 *
 * Python hands over what is the same for every line, already as JSON (a pg_decision_form): each
 * action's name and its ecs, log and event fields, and the observer.
 */
#define _GNU_SOURCE
#include <math.h>
#include <string.h>

#include "lines.h"

#define MAX_ACTIONS 8
#define RECORD_FIELDS 15
#define FLAG_REF 0x80
#define LAST_SECOND 253402300799.0 /* 9999-12-31T23:59:59Z: the last second `datetime` has */

enum { V_NONE, V_INT, V_FLOAT, V_STR, V_CONTAINER };
enum { OK = 0, UNSUPPORTED = -1, MALFORMED = -2, NO_ROOM = -3 };
enum {
    F_NOW, F_VERSION, F_SRC, F_DST, F_SPORT, F_DPORT, F_DIRECTION, F_ACTION, F_RULE_ID,
    F_RULESET, F_DESCRIPTION, F_REASON, F_POLICY_VERSION, F_FLOW_ID, F_LIMIT
};

/* what every line shares (the caller's, set once) */
typedef struct {
    uint32_t actions;                 /* how many of the arrays below are set */
    const char *names[MAX_ACTIONS];   /* an action's value ("allow", ...) */
    const char *heads[MAX_ACTIONS];   /* its "ecs", "log" and "event" fields, no braces */
    const char *observer;             /* the observer's fields, no braces */
} pg_decision_form;

/* one marshalled value: an int's magnitude and sign, a float, a string's bytes (`ascii`: one of
 * marshal's ASCII types), a container's item count */
typedef struct {
    int kind, negative, ascii;
    unsigned __int128 magnitude;
    double real;
    const uint8_t *text;
    uint32_t size;
} value_t;

/* where the next value starts; the offsets of the values marshal marked for reference */
typedef struct {
    const uint8_t *base, *at, *end;
    uint32_t *refs, count, room;
    int keep; /* register marked values (not while re-reading a referenced one) */
} reader_t;

static int take(reader_t *r, uint32_t n, const uint8_t **at) {
    if ((size_t)(r->end - r->at) < n)
        return MALFORMED;
    *at = r->at;
    r->at += n;
    return OK;
}

static int take_u32(reader_t *r, uint32_t *v) {
    const uint8_t *at;
    if (take(r, 4, &at))
        return MALFORMED;
    *v = (uint32_t)at[0] | (uint32_t)at[1] << 8 | (uint32_t)at[2] << 16 | (uint32_t)at[3] << 24;
    return OK;
}

/* marshal's long: a signed count of 15-bit digits, least significant first */
static int read_long(reader_t *r, value_t *v) {
    uint32_t raw;
    if (take_u32(r, &raw))
        return MALFORMED;
    int32_t count = (int32_t)raw;
    v->negative = count < 0;
    uint32_t digits = count < 0 ? 0u - raw : raw;
    const uint8_t *at;
    if (digits > (uint32_t)(r->end - r->at) / 2 || take(r, digits * 2, &at))
        return MALFORMED;
    for (uint32_t i = 0; i < digits; i++) {
        uint32_t digit = (uint32_t)at[2 * i] | (uint32_t)at[2 * i + 1] << 8;
        if (digit > 0x7fff)
            return MALFORMED;
        if (!digit)
            continue;
        if (15 * i >= 128 || (15 * i > 113 && digit >> (128 - 15 * i)))
            return UNSUPPORTED; /* wider than 128 bits: no address, no port */
        v->magnitude |= (unsigned __int128)digit << (15 * i);
    }
    return OK;
}

static int read_string(reader_t *r, value_t *v, int ascii, int short_size) {
    uint32_t size;
    if (short_size) {
        const uint8_t *at;
        if (take(r, 1, &at))
            return MALFORMED;
        size = *at;
    } else if (take_u32(r, &size)) {
        return MALFORMED;
    }
    v->kind = V_STR;
    v->ascii = ascii;
    v->size = size;
    return take(r, size, &v->text);
}

static int read_value(reader_t *r, value_t *v);

static int read_reference(reader_t *r, value_t *v) {
    uint32_t index;
    if (take_u32(r, &index))
        return MALFORMED;
    if (index >= r->count)
        return MALFORMED;
    reader_t again = {r->base, r->base + r->refs[index], r->end, r->refs, r->count, 0, 0};
    int found = read_value(&again, v);
    if (found)
        return found;
    return v->kind == V_CONTAINER ? UNSUPPORTED : OK; /* a record shared twice: not here */
}

/* One value; a container's items are left for the caller to read. */
static int read_value(reader_t *r, value_t *v) {
    const uint8_t *at;
    if (take(r, 1, &at))
        return MALFORMED;
    int type = *at & ~FLAG_REF;
    memset(v, 0, sizeof *v);
    if (type == 'r')
        return read_reference(r, v);
    if ((*at & FLAG_REF) && r->keep && type != 'N') { /* marshal keeps no reference to None */
        if (r->count >= r->room)
            return NO_ROOM;
        r->refs[r->count++] = (uint32_t)(at - r->base);
    }
    uint32_t raw;
    switch (type) {
    case 'N':
        v->kind = V_NONE;
        return OK;
    case 'i':
        if (take_u32(r, &raw))
            return MALFORMED;
        v->kind = V_INT;
        v->negative = (int32_t)raw < 0;
        v->magnitude = v->negative ? 0u - (uint64_t)(int64_t)(int32_t)raw : raw;
        return OK;
    case 'l':
        v->kind = V_INT;
        return read_long(r, v);
    case 'g':
        if (take(r, 8, &at))
            return MALFORMED;
        v->kind = V_FLOAT;
        memcpy(&v->real, at, 8); /* little-endian, as marshal writes it (checked below) */
        return OK;
    case 'u':
    case 't':
        return read_string(r, v, 0, 0);
    case 'a':
    case 'A':
        return read_string(r, v, 1, 0);
    case 'z':
    case 'Z':
        return read_string(r, v, 1, 1);
    case '(':
    case '[':
        v->kind = V_CONTAINER;
        return take_u32(r, &v->size);
    case ')':
        if (take(r, 1, &at))
            return MALFORMED;
        v->kind = V_CONTAINER;
        v->size = *at;
        return OK;
    default:
        return UNSUPPORTED;
    }
}

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "marshal writes floats little-endian: read them so on this machine"
#endif

/* --- strings as JSON, escaped as orjson escapes them ------------------------------------- */

/* The length of the well-formed UTF-8 sequence at `s` (of at most `left` bytes), 0 if none
 * (surrogates and overlong forms included). */
static uint32_t utf8_length(const uint8_t *s, uint32_t left) {
    uint8_t c = s[0];
    uint32_t n;
    uint32_t lowest, point;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2, point = c & 0x1Fu, lowest = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3, point = c & 0x0Fu, lowest = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, point = c & 0x07u, lowest = 0x10000;
    } else {
        return 0;
    }
    if (n > left)
        return 0;
    for (uint32_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        point = point << 6 | (s[i] & 0x3Fu);
    }
    if (point < lowest || point > 0x10FFFF || (point >= 0xD800 && point <= 0xDFFF))
        return 0;
    return n;
}

static int put_json_string(out_t *o, const value_t *v) {
    static const char HEX[] = "0123456789abcdef";
    put(o, "\"", 1);
    const uint8_t *s = v->text;
    uint32_t at = 0, plain = 0;
    while (at < v->size) {
        uint8_t c = s[at];
        if (c >= 0x80) {
            uint32_t n = v->ascii ? 0 : utf8_length(s + at, v->size - at);
            if (!n)
                return UNSUPPORTED;
            at += n;
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\') {
            at++;
            continue;
        }
        put(o, (const char *)s + plain, at - plain);
        char escaped[6] = {'\\', (char)c, 0, 0, 0, 0};
        size_t n = 2;
        switch (c) {
        case '"':
        case '\\':
            break;
        case '\b':
            escaped[1] = 'b';
            break;
        case '\t':
            escaped[1] = 't';
            break;
        case '\n':
            escaped[1] = 'n';
            break;
        case '\f':
            escaped[1] = 'f';
            break;
        case '\r':
            escaped[1] = 'r';
            break;
        default:
            memcpy(escaped + 1, "u00", 3);
            escaped[4] = HEX[c >> 4];
            escaped[5] = HEX[c & 15];
            n = 6;
        }
        put(o, escaped, n);
        plain = ++at;
    }
    put(o, (const char *)s + plain, at - plain);
    put(o, "\"", 1);
    return OK;
}

/* --- one record ---------------------------------------------------------------------------- */

/* a non-negative int of at most `bits` bits (128 at most) */
static int is_int(const value_t *v, int bits) {
    return v->kind == V_INT && !v->negative && (bits == 128 || v->magnitude >> bits == 0);
}

static void address_of(const value_t *v, int size, uint8_t *raw) {
    for (int i = 0; i < size; i++)
        raw[i] = (uint8_t)(v->magnitude >> (8 * (size - 1 - i)));
}

/* `now` as LineRenderer's Timestamps gives it: math.modf, the fraction's microseconds rounded
 * half to even (Python's round), a whole million carried into the second. */
static int put_stamp(out_t *o, double now) {
    if (!isfinite(now) || now < 0 || now > LAST_SECOND + 1)
        return UNSUPPORTED;
    double whole, fraction = modf(now, &whole);
    double micro = nearbyint(fraction * 1e6);
    if (micro >= 1e6) {
        whole += 1;
        micro = 0;
    }
    if (whole > LAST_SECOND)
        return UNSUPPORTED;
    put_time(o, (uint64_t)whole, (uint32_t)micro);
    return OK;
}

static int action_of(const pg_decision_form *form, const value_t *v) {
    for (uint32_t i = 0; i < form->actions && i < MAX_ACTIONS; i++) {
        const char *name = form->names[i];
        if (strlen(name) == v->size && !memcmp(name, v->text, v->size))
            return (int)i;
    }
    return -1;
}

static int put_field(out_t *o, const char *opening, const value_t *v) {
    puts_(o, opening);
    return put_json_string(o, v);
}

/* One record's line; its action's index in `*action`. */
static int put_record(out_t *o, const pg_decision_form *form, const value_t *f, int *action) {
    static const int TEXTS[] = {F_DIRECTION, F_ACTION, F_RULE_ID, F_RULESET, F_DESCRIPTION,
                                F_REASON, F_POLICY_VERSION, F_FLOW_ID};
    for (size_t i = 0; i < sizeof TEXTS / sizeof *TEXTS; i++)
        if (f[TEXTS[i]].kind != V_STR)
            return UNSUPPORTED;
    if (f[F_NOW].kind != V_FLOAT || f[F_LIMIT].kind != V_NONE || !is_int(&f[F_VERSION], 3))
        return UNSUPPORTED;
    int version = (int)f[F_VERSION].magnitude;
    if (version != 4 && version != 6)
        return UNSUPPORTED;
    int size = version == 4 ? 4 : 16;
    if (!is_int(&f[F_SRC], 8 * size) || !is_int(&f[F_DST], 8 * size))
        return UNSUPPORTED;
    if (!is_int(&f[F_SPORT], 16) || !is_int(&f[F_DPORT], 16))
        return UNSUPPORTED;
    *action = action_of(form, &f[F_ACTION]);
    if (*action < 0)
        return UNSUPPORTED;

    uint8_t src[16], dst[16];
    address_of(&f[F_SRC], size, src);
    address_of(&f[F_DST], size, dst);
    uint16_t sport = (uint16_t)f[F_SPORT].magnitude, dport = (uint16_t)f[F_DPORT].magnitude;
    int failed = OK;
    puts_(o, "{\"@timestamp\":\"");
    failed |= put_stamp(o, f[F_NOW].real);
    puts_(o, "\",");
    puts_(o, form->heads[*action]);
    failed |= put_field(o, ",\"rule\":{\"id\":", &f[F_RULE_ID]);
    failed |= put_field(o, ",\"ruleset\":", &f[F_RULESET]);
    if (f[F_DESCRIPTION].size)
        failed |= put_field(o, ",\"description\":", &f[F_DESCRIPTION]);
    puts_(o, "},\"source\":{\"ip\":\"");
    put_ip(o, version, src);
    puts_(o, "\",\"port\":");
    put_u64(o, sport);
    puts_(o, "},\"destination\":{\"ip\":\"");
    put_ip(o, version, dst);
    puts_(o, "\",\"port\":");
    put_u64(o, dport);
    puts_(o, "},\"network\":{\"transport\":\"tcp\",\"iana_number\":\"6\",\"type\":");
    puts_(o, version == 4 ? "\"ipv4\"" : "\"ipv6\"");
    failed |= put_field(o, ",\"direction\":", &f[F_DIRECTION]);
    puts_(o, ",\"community_id\":\"");
    put_community_id(o, src, dst, size, sport, dport);
    puts_(o, "\"},\"observer\":{");
    puts_(o, form->observer);
    failed |= put_field(o, "},\"portguard\":{\"flow_id\":", &f[F_FLOW_ID]);
    failed |= put_field(o, ",\"reason\":", &f[F_REASON]);
    failed |= put_field(o, ",\"policy_version\":", &f[F_POLICY_VERSION]);
    puts_(o, "}}\n");
    return failed ? UNSUPPORTED : OK;
}

/* The lines of the records an `r` frame's payload (`len` bytes) carries, into `out` (`cap`
 * bytes), one after the other, each ended by a newline; for the i-th record `marks[2i]` is
 * where its line ends (after the newline) and `marks[2i + 1]` its action's index in `form`.
 * `refs` (`ref_room` words) holds the offsets of the values marshal marked for reference.
 * The number of records (at most `room`), or: -1 something it does not render (the caller
 * renders the payload in Python), -2 malformed, -3 `out`, `marks` or `refs` too small. */
int pg_decision_lines(const uint8_t *payload, uint32_t len, const pg_decision_form *form,
                      char *out, uint32_t cap, uint32_t *marks, uint32_t room, uint32_t *refs,
                      uint32_t ref_room) {
    reader_t r = {payload, payload, payload + len, refs, 0, ref_room, 1};
    value_t list;
    int found = read_value(&r, &list);
    if (found)
        return found;
    if (list.kind != V_CONTAINER || (payload[0] & ~FLAG_REF) != '[')
        return UNSUPPORTED;
    if (list.size > room)
        return NO_ROOM;
    out_t o = {out, out + cap, 0};
    for (uint32_t i = 0; i < list.size; i++) {
        value_t record, fields[RECORD_FIELDS];
        if ((found = read_value(&r, &record)))
            return found;
        if (record.kind != V_CONTAINER || record.size != RECORD_FIELDS)
            return UNSUPPORTED;
        for (int k = 0; k < RECORD_FIELDS; k++) {
            if ((found = read_value(&r, &fields[k])))
                return found;
            if (fields[k].kind == V_CONTAINER)
                return UNSUPPORTED;
        }
        int action = 0;
        if ((found = put_record(&o, form, fields, &action)))
            return found;
        if (o.full)
            return NO_ROOM;
        marks[2 * i] = (uint32_t)(o.at - out);
        marks[2 * i + 1] = (uint32_t)action;
    }
    return (int)list.size;
}
