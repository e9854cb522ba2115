/* libosip2 reference for parser-bench.sh: parse + the same field access as ParserThroughput.
 * Usage: osip-bench SECONDS FILE...   Prints `mix N` and `invite N` (messages per second).
 *        osip-bench count ROUNDS FILE...   Exactly ROUNDS rounds of the mix (for callgrind). */
#include <osipparser2/osip_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long parse_and_read(const char *buf, size_t len) {
    osip_message_t *m;
    long sum = 0;
    if (osip_message_init(&m) != 0) return -1;
    if (osip_message_parse(m, buf, len) != 0) { osip_message_free(m); return -1; }
    sum += osip_list_size(&m->headers);
    osip_via_t *via = NULL;
    if (osip_message_get_via(m, 0, &via) >= 0 && via) {
        osip_generic_param_t *branch = NULL;
        osip_via_param_get_byname(via, "branch", &branch);
        if (branch && branch->gvalue) sum += strlen(branch->gvalue);
    }
    if (m->call_id && m->call_id->number) sum += strlen(m->call_id->number);
    if (m->cseq && m->cseq->number) sum += atol(m->cseq->number);
    osip_generic_param_t *tag = NULL;
    if (m->from && osip_from_get_tag(m->from, &tag) == 0 && tag && tag->gvalue) sum += strlen(tag->gvalue);
    tag = NULL;
    if (m->to && osip_to_get_tag(m->to, &tag) == 0 && tag && tag->gvalue) sum += strlen(tag->gvalue);
    if (m->req_uri && m->req_uri->host) sum += strlen(m->req_uri->host);
    osip_route_t *route = NULL;
    if (osip_message_get_route(m, 0, &route) >= 0 && route && route->url && route->url->host) sum += strlen(route->url->host);
    osip_message_free(m);
    return sum;
}

static double rate(char **bufs, size_t *lens, int n, double seconds) {
    long checksum = 0, done = 0;
    double start = now(), end = start + seconds, t;
    while ((t = now()) < end) {
        for (int r = 0; r < 1000; r++)
            for (int i = 0; i < n; i++) checksum += parse_and_read(bufs[i], lens[i]);
        done += 1000L * n;
    }
    if (checksum == 42) puts("");
    return done / (now() - start);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s SECONDS FILE... | count ROUNDS FILE...\n", argv[0]); return 2; }
    int counting = strcmp(argv[1], "count") == 0;
    if (counting) { argv++; argc--; }
    double seconds = atof(argv[1]);
    int n = argc - 2, invite = -1;
    char **bufs = calloc(n, sizeof *bufs);
    size_t *lens = calloc(n, sizeof *lens);
    parser_init();
    for (int i = 0; i < n; i++) {
        FILE *f = fopen(argv[i + 2], "rb");
        if (!f) { perror(argv[i + 2]); return 1; }
        bufs[i] = malloc(65536);
        lens[i] = fread(bufs[i], 1, 65536, f);
        fclose(f);
        if (parse_and_read(bufs[i], lens[i]) < 0) { fprintf(stderr, "libosip2 cannot parse %s\n", argv[i + 2]); return 1; }
        if (strstr(argv[i + 2], "invite_sdp.sip")) invite = i;
    }
    if (counting) {
        long sum = 0;
        for (long r = 0; r < (long)seconds; r++)
            for (int i = 0; i < n; i++) sum += parse_and_read(bufs[i], lens[i]);
        printf("rounds %ld checksum %ld\n", (long)seconds, sum);
        return 0;
    }
    printf("mix %.0f\n", rate(bufs, lens, n, seconds));
    printf("invite %.0f\n", rate(&bufs[invite], &lens[invite], 1, seconds));
    return 0;
}
