#define _GNU_SOURCE
#include <malloc.h>
#include "CTransportShim.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <linux/errqueue.h>
#include <linux/filter.h>
#include <netinet/ip.h>
#include <netinet/sctp.h>
#include <sys/random.h>

int sipedge_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
int sipedge_epoll_op_add(void) { return EPOLL_CTL_ADD; }
int sipedge_epoll_op_mod(void) { return EPOLL_CTL_MOD; }
int sipedge_epoll_op_del(void) { return EPOLL_CTL_DEL; }

int sipedge_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

int sipedge_epoll_wait(int epfd, sipedge_epoll_event *events, int max, int timeout_ms) {
    struct epoll_event raw[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, raw, max, timeout_ms);
    for (int i = 0; i < n; i++) {
        events[i].events = raw[i].events;
        events[i].data = raw[i].data.u64;
    }
    return n;
}

int sipedge_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int sipedge_eventfd_signal(int fd) {
    uint64_t one = 1;
    return write(fd, &one, sizeof one) == sizeof one ? 0 : -1;
}

int sipedge_eventfd_drain(int fd) {
    uint64_t value;
    return read(fd, &value, sizeof value) == sizeof value ? 0 : -1;
}

/* Points each mmsghdr at its datagram's buffer and address (receive: room for any address). */
static void fill_headers(struct mmsghdr *msgs, struct iovec *iov, sipedge_datagram *d, unsigned count, int receiving) {
    memset(msgs, 0, sizeof(struct mmsghdr) * count);
    for (unsigned i = 0; i < count; i++) {
        iov[i].iov_base = d[i].base;
        iov[i].iov_len = d[i].length;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &d[i].address;
        msgs[i].msg_hdr.msg_namelen = receiving ? sizeof d[i].address : d[i].address_length;
    }
}

int sipedge_receive_batch(int fd, sipedge_datagram *d, unsigned count) {
    struct mmsghdr msgs[64];
    struct iovec iov[64];
    if (count > 64) count = 64;
    fill_headers(msgs, iov, d, count, 1);
    int n;
    do { n = recvmmsg(fd, msgs, count, MSG_DONTWAIT, NULL); } while (n < 0 && errno == EINTR);
    for (int i = 0; i < n; i++) {
        d[i].length = msgs[i].msg_len;
        d[i].address_length = msgs[i].msg_hdr.msg_namelen;
        d[i].truncated = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
    }
    return n;
}

int sipedge_send_batch(int fd, sipedge_datagram *d, unsigned count) {
    struct mmsghdr msgs[64];
    struct iovec iov[64];
    if (count > 64) count = 64;
    fill_headers(msgs, iov, d, count, 0);
    int n;
    do { n = sendmmsg(fd, msgs, count, MSG_DONTWAIT); } while (n < 0 && errno == EINTR);
    for (int i = 0; i < n; i++) d[i].length = msgs[i].msg_len;
    return n;
}

int sipedge_enable_receive_errors(int fd, int family) {
    int on = 1;
    if (family == AF_INET6) {
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &on, sizeof on) != 0) return -1;
        /* A dual-stack socket also receives IPv4 errors. */
        (void)setsockopt(fd, IPPROTO_IP, IP_RECVERR, &on, sizeof on);
        return 0;
    }
    return setsockopt(fd, IPPROTO_IP, IP_RECVERR, &on, sizeof on);
}

int sipedge_read_socket_error(int fd, int *errno_out, struct sockaddr_storage *destination, socklen_t *destination_length) {
    char control[512];
    char payload[1];
    struct iovec iov = { payload, sizeof payload };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_name = destination;
    msg.msg_namelen = sizeof *destination;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    do { n = recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT); } while (n < 0 && errno == EINTR);
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    *destination_length = msg.msg_namelen;
    *errno_out = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR) ||
            (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
            struct sock_extended_err *e = (struct sock_extended_err *)CMSG_DATA(c);
            *errno_out = (int)e->ee_errno;
        }
    }
    return 1;
}

int sipedge_sctp_socket(int family) {
    return socket(family, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_SCTP);
}

int sipedge_accept(int fd, struct sockaddr *address, socklen_t *length) {
    return accept4(fd, address, length, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

void sipedge_log_line(const char *line) {
    size_t n = strlen(line);
    char buffer[4096];
    if (n > sizeof buffer - 1) n = sizeof buffer - 1;
    memcpy(buffer, line, n);
    buffer[n] = '\n';
    ssize_t r = write(2, buffer, n + 1);
    (void)r;
}

ssize_t sipedge_sctp_send(int fd, const void *bytes, size_t length, const struct sockaddr *address, socklen_t address_length) {
    ssize_t n;
    do {
        n = sctp_sendmsg(fd, bytes, length, (struct sockaddr *)address, address_length, 0, 0, 0, 0, 0);
    } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t sipedge_sctp_receive(int fd, void *buffer, size_t capacity, struct sockaddr_storage *from, socklen_t *from_length, int *notification) {
    struct sctp_sndrcvinfo info;
    int flags = 0;
    ssize_t n;
    *from_length = sizeof *from;
    do {
        n = sctp_recvmsg(fd, buffer, capacity, (struct sockaddr *)from, from_length, &info, &flags);
    } while (n < 0 && errno == EINTR);
    *notification = (flags & MSG_NOTIFICATION) != 0;
    return n;
}

int sipedge_random_bytes(void *buffer, size_t length) {
    return getrandom(buffer, length, 0) == (ssize_t)length ? 0 : -1;
}

int sipedge_malloc_trim(void) {
    return malloc_trim(0);
}

void sipedge_keep_freed_memory(size_t bytes) {
    /* A heap shrinks only past this much free memory at its top (glibc's default is 128 KiB, so
       every burst of frees gave pages back and the next burst asked for them again: mprotect and
       page faults per call). Setting it fixes glibc's sliding thresholds too. */
    mallopt(M_TRIM_THRESHOLD, (int)bytes);
    mallopt(M_TOP_PAD, 1 << 20);
}

void sipedge_reserve_heap(size_t bytes) {
    /* A thread's arena grows a few pages at a time, with an mprotect each time it passes its
       highest size so far (and M_TOP_PAD does not apply to it). Growing it once, here, then
       freeing: the pages are mapped read-write but untouched (no resident memory but the chunk
       headers), and they stay in the heap up to M_TRIM_THRESHOLD. */
    enum { chunk = 64 << 10 };
    size_t count = bytes / chunk;
    void **chunks = malloc(count * sizeof(void *));
    if (!chunks) return;
    size_t n = 0;
    while (n < count && (chunks[n] = malloc(chunk - 64)) != NULL) n++;
    while (n > 0) free(chunks[--n]);
    free(chunks);
}

/* --- Steering responses to their worker (SO_ATTACH_REUSEPORT_CBPF) ----------------------------
 *
 * Classic BPF has no loops and only forward jumps of at most 255 instructions (conditional), so
 * the searches are unrolled and every failed check falls through to its own "not steered" return
 * (an index past the group: the kernel then uses its hash, as without a program). The packet
 * seen is the UDP payload. All loads stay below STEER_MIN_LENGTH, which the first check demands.
 */
#define STEER_STATUS_SCAN 64   /* the status line's end is looked for in bytes 12..75 */
#define STEER_VIA_SCAN 128     /* ";branch=" is looked for this far into the Via line */
#define STEER_MIN_LENGTH (12 + STEER_STATUS_SCAN + 5 + STEER_VIA_SCAN + 24)
#define STEER_NONE 0xFFFFFFFFu

#define STEER_CAPACITY 1400     /* the program below needs about 1,060 instructions */
struct steer_program { struct sock_filter insns[STEER_CAPACITY]; unsigned short n; int overflow; };

static void emit(struct steer_program *p, struct sock_filter f) {
    if (p->n < STEER_CAPACITY) p->insns[p->n++] = f; else p->overflow = 1;
}

/* Continues when A == value, returns "not steered" otherwise. */
static void expect_eq(struct steer_program *p, uint32_t value) {
    emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, value, 1, 0));
    emit(p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, STEER_NONE));
}

/* Continues when A is an ASCII digit (leaving A - '0'), returns "not steered" otherwise. */
static void expect_digit(struct steer_program *p) {
    emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, '0', 1, 0));
    emit(p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, STEER_NONE));
    emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, '9', 0, 1));
    emit(p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, STEER_NONE));
    emit(p, (struct sock_filter)BPF_STMT(BPF_ALU | BPF_SUB | BPF_K, '0'));
}

static uint32_t word(const char s[4]) {
    return (uint32_t)(unsigned char)s[0] << 24 | (uint32_t)(unsigned char)s[1] << 16 |
           (uint32_t)(unsigned char)s[2] << 8 | (uint32_t)(unsigned char)s[3];
}

static void build_steering(struct steer_program *p) {
    p->n = 0;
    p->overflow = 0;
    /* Long enough for every load below, and a response ("SIP/2.0 "). */
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0));
    emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, STEER_MIN_LENGTH, 1, 0));
    emit(p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, STEER_NONE));
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0));
    expect_eq(p, word("SIP/"));
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 4));
    expect_eq(p, word("2.0 "));
    /* X = the start of the second line: the byte after the status line's LF. Each position:
     * load, compare, and on a match set X and jump (unconditionally: 32-bit offset) past the scan. */
    unsigned short scan_end = (unsigned short)(p->n + 4 * STEER_STATUS_SCAN);
    for (int k = 12; k < 12 + STEER_STATUS_SCAN; k++) {
        emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_B | BPF_ABS, (uint32_t)k));
        emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, '\n', 0, 2));
        emit(p, (struct sock_filter)BPF_STMT(BPF_LDX | BPF_W | BPF_IMM, (uint32_t)(k + 1)));
        emit(p, (struct sock_filter)BPF_STMT(BPF_JMP | BPF_JA, (uint32_t)(scan_end - p->n)));
    }
    emit(p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, STEER_NONE));   /* no LF: not steered */
    /* The second line is the top Via, written out ("Via: "; compact "v:" is not steered). */
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_IND, 0));
    expect_eq(p, word("Via:"));
    /* Its ";branch=" (PJSIP writes rport and received first): X moves to it. */
    unsigned short via_end = (unsigned short)(p->n + 6 * STEER_VIA_SCAN);
    for (int k = 5; k < 5 + STEER_VIA_SCAN; k++) {
        emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_IND, (uint32_t)k));
        emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, word(";bra"), 0, 4));
        emit(p, (struct sock_filter)BPF_STMT(BPF_MISC | BPF_TXA, 0));
        emit(p, (struct sock_filter)BPF_STMT(BPF_ALU | BPF_ADD | BPF_K, (uint32_t)k));
        emit(p, (struct sock_filter)BPF_STMT(BPF_MISC | BPF_TAX, 0));
        emit(p, (struct sock_filter)BPF_STMT(BPF_JMP | BPF_JA, (uint32_t)(via_end - p->n)));
    }
    emit(p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, STEER_NONE));
    /* ";branch=z9hG4bKs" then one or two digits, then "x". */
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_IND, 4));
    expect_eq(p, word("nch="));
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_IND, 8));
    expect_eq(p, word("z9hG"));
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_IND, 12));
    expect_eq(p, word("4bKs"));
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_B | BPF_IND, 16));
    expect_digit(p);
    emit(p, (struct sock_filter)BPF_STMT(BPF_ST, 0));                      /* M[0] = first digit */
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_B | BPF_IND, 17));
    emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 'x', 0, 2));
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_MEM, 0));
    emit(p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_A, 0));            /* s<d>x: worker d */
    expect_digit(p);
    emit(p, (struct sock_filter)BPF_STMT(BPF_ST, 1));                      /* M[1] = second digit */
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_B | BPF_IND, 18));
    expect_eq(p, 'x');
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_MEM, 0));
    emit(p, (struct sock_filter)BPF_STMT(BPF_ALU | BPF_MUL | BPF_K, 10));
    emit(p, (struct sock_filter)BPF_STMT(BPF_LDX | BPF_W | BPF_MEM, 1));
    emit(p, (struct sock_filter)BPF_STMT(BPF_ALU | BPF_ADD | BPF_X, 0));
    emit(p, (struct sock_filter)BPF_STMT(BPF_RET | BPF_A, 0));            /* s<dd>x: worker dd */
}

int sipedge_steer_responses_by_branch(int fd) {
    struct steer_program program;   /* 11 KiB on the stack; the kernel copies it */
    build_steering(&program);
    if (program.overflow) { errno = E2BIG; return -1; }
    struct sock_fprog prog = { program.n, program.insns };
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog);
}
