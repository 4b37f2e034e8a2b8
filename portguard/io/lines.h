/* What flowlines.c and decisionlines.c share: a bounded output buffer and the parts of an ECS
 * line both write (hidden: the library exports only its pg_ functions). */
#ifndef PG_LINES_H
#define PG_LINES_H

#include <stddef.h>
#include <stdint.h>

#define PG_HIDDEN __attribute__((visibility("hidden")))

/* where the next byte goes, the end of the room; `full` once something did not fit */
typedef struct {
    char *at, *end;
    int full;
} out_t;

PG_HIDDEN void put(out_t *o, const char *s, size_t n);
PG_HIDDEN void puts_(out_t *o, const char *s);
PG_HIDDEN void put_u64(out_t *o, uint64_t v);
/* 2026-12-05T15:09:24.123456Z of whole seconds (year 9999 at most) and microseconds */
PG_HIDDEN void put_time(out_t *o, uint64_t seconds, uint32_t micro);
/* an address (4 or 16 bytes, network order) as inet_ntop writes it */
PG_HIDDEN void put_ip(out_t *o, int version, const uint8_t *raw);
/* "1:..." of a TCP connection's endpoints (addresses of `size` bytes) */
PG_HIDDEN void put_community_id(out_t *o, const uint8_t *src, const uint8_t *dst, int size,
                                uint16_t sport, uint16_t dport);

#endif
