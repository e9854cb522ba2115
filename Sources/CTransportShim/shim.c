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

int tshim_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
int tshim_epoll_op_add(void) { return EPOLL_CTL_ADD; }
int tshim_epoll_op_mod(void) { return EPOLL_CTL_MOD; }
int tshim_epoll_op_del(void) { return EPOLL_CTL_DEL; }

int tshim_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

int tshim_epoll_wait(int epfd, tshim_epoll_event *events, int max, int timeout_ms) {
    struct epoll_event raw[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, raw, max, timeout_ms);
    for (int i = 0; i < n; i++) {
        events[i].events = raw[i].events;
        events[i].data = raw[i].data.u64;
    }
    return n;
}

int tshim_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int tshim_eventfd_signal(int fd) {
    uint64_t one = 1;
    return write(fd, &one, sizeof one) == sizeof one ? 0 : -1;
}

int tshim_eventfd_drain(int fd) {
    uint64_t value;
    return read(fd, &value, sizeof value) == sizeof value ? 0 : -1;
}

/* Points each mmsghdr at its datagram's buffer and address (receive: room for any address). */
static void fill_headers(struct mmsghdr *msgs, struct iovec *iov, tshim_datagram *d, unsigned count, int receiving) {
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

int tshim_receive_batch(int fd, tshim_datagram *d, unsigned count) {
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

int tshim_send_batch(int fd, tshim_datagram *d, unsigned count) {
    struct mmsghdr msgs[64];
    struct iovec iov[64];
    if (count > 64) count = 64;
    fill_headers(msgs, iov, d, count, 0);
    int n;
    do { n = sendmmsg(fd, msgs, count, MSG_DONTWAIT); } while (n < 0 && errno == EINTR);
    for (int i = 0; i < n; i++) d[i].length = msgs[i].msg_len;
    return n;
}

int tshim_enable_receive_errors(int fd, int family) {
    int on = 1;
    if (family == AF_INET6) {
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_RECVERR, &on, sizeof on) != 0) return -1;
        /* A dual-stack socket also receives IPv4 errors. */
        (void)setsockopt(fd, IPPROTO_IP, IP_RECVERR, &on, sizeof on);
        return 0;
    }
    return setsockopt(fd, IPPROTO_IP, IP_RECVERR, &on, sizeof on);
}

int tshim_read_socket_error(int fd, int *errno_out, struct sockaddr_storage *destination, socklen_t *destination_length) {
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

int tshim_sctp_socket(int family) {
    return socket(family, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_SCTP);
}

int tshim_accept(int fd, struct sockaddr *address, socklen_t *length) {
    return accept4(fd, address, length, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

void tshim_log_line(const char *line) {
    size_t n = strlen(line);
    char buffer[4096];
    if (n > sizeof buffer - 1) n = sizeof buffer - 1;
    memcpy(buffer, line, n);
    buffer[n] = '\n';
    ssize_t r = write(2, buffer, n + 1);
    (void)r;
}

ssize_t tshim_sctp_send(int fd, const void *bytes, size_t length, const struct sockaddr *address, socklen_t address_length) {
    ssize_t n;
    do {
        n = sctp_sendmsg(fd, bytes, length, (struct sockaddr *)address, address_length, 0, 0, 0, 0, 0);
    } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t tshim_sctp_receive(int fd, void *buffer, size_t capacity, struct sockaddr_storage *from, socklen_t *from_length, int *notification) {
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

int tshim_random_bytes(void *buffer, size_t length) {
    return getrandom(buffer, length, 0) == (ssize_t)length ? 0 : -1;
}

int tshim_malloc_trim(void) {
    return malloc_trim(0);
}

void tshim_keep_freed_memory(size_t bytes) {
    /* A heap shrinks only past this much free memory at its top (glibc's default is 128 KiB, so
       every burst of frees gave pages back and the next burst asked for them again: mprotect and
       page faults per call). Setting it fixes glibc's sliding thresholds too. */
    mallopt(M_TRIM_THRESHOLD, (int)bytes);
    mallopt(M_TOP_PAD, 1 << 20);
}

void tshim_reserve_heap(size_t bytes) {
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

/* --- A program choosing the socket of a SO_REUSEPORT group (SO_ATTACH_REUSEPORT_CBPF) -------- */

int tshim_attach_reuseport_program(int fd, const struct sock_filter *instructions, unsigned int count) {
    if (count == 0 || count > BPF_MAXINSNS) { errno = E2BIG; return -1; }
    struct sock_fprog prog = { (unsigned short)count, (struct sock_filter *)instructions };
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog);
}
