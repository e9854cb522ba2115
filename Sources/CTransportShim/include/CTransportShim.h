// Linux interfaces Swift's Glibc module does not give us (epoll, eventfd, recvmmsg/sendmmsg, the
// socket error queue), behind plain functions and plain structs. No _GNU_SOURCE here: it is set in
// the .c file only (defining it in a header Swift imports breaks the Glibc module).
#ifndef TSHIM_TRANSPORT_SHIM_H
#define TSHIM_TRANSPORT_SHIM_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <linux/filter.h>

/// One epoll event, unpacked (the kernel's struct is packed on x86-64).
typedef struct {
    uint32_t events;
    uint64_t data;
} tshim_epoll_event;

enum {
    TSHIM_EPOLLIN = 0x001,
    TSHIM_EPOLLOUT = 0x004,
    TSHIM_EPOLLERR = 0x008,
    TSHIM_EPOLLHUP = 0x010,
    TSHIM_EPOLLRDHUP = 0x2000,
    TSHIM_EPOLLET = (int)(1u << 31),
};

int tshim_epoll_create(void);
int tshim_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
int tshim_epoll_wait(int epfd, tshim_epoll_event *events, int max, int timeout_ms);
int tshim_epoll_op_add(void);
int tshim_epoll_op_mod(void);
int tshim_epoll_op_del(void);

int tshim_eventfd(void);
int tshim_eventfd_signal(int fd);
int tshim_eventfd_drain(int fd);

/// One datagram of a batch: the buffer, its length (in: capacity for receive, length for send;
/// out: bytes received or sent) and the peer address.
typedef struct {
    void *base;
    size_t length;
    struct sockaddr_storage address;
    socklen_t address_length;
    int truncated;
} tshim_datagram;

/// recvmmsg over `count` datagrams (at most 64); returns how many arrived, or -1 with errno.
int tshim_receive_batch(int fd, tshim_datagram *datagrams, unsigned count);
/// sendmmsg over `count` datagrams (at most 64); returns how many were sent, or -1 with errno.
int tshim_send_batch(int fd, tshim_datagram *datagrams, unsigned count);

/// Turns on IP_RECVERR / IPV6_RECVERR so ICMP errors are queued on the socket.
int tshim_enable_receive_errors(int fd, int family);

/* Attaches a classic BPF program to the SO_REUSEPORT group of `fd`: it returns, per datagram, the
 * index of the group's socket to queue it on (an index past the group: the kernel's usual hash).
 * At most BPF_MAXINSNS instructions (E2BIG otherwise). Returns 0, or -1 with errno. */
int tshim_attach_reuseport_program(int fd, const struct sock_filter *instructions, unsigned int count);
/// Reads one queued socket error: returns 1 and fills errno_out and the destination address the
/// failed datagram was sent to, 0 if the queue is empty, -1 with errno otherwise.
int tshim_read_socket_error(int fd, int *errno_out, struct sockaddr_storage *destination, socklen_t *destination_length);

/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC.
int tshim_accept(int fd, struct sockaddr *address, socklen_t *length);

/// Fills `buffer` with random bytes from the kernel (getrandom); 0 on success.
int tshim_random_bytes(void *buffer, size_t length);

/// Writes one line to standard error (2) in one write call.
void tshim_log_line(const char *line);

/// SCTP one-to-many socket (RFC 4168); -1 with errno where the kernel has no SCTP.
int tshim_sctp_socket(int family);
/// One SIP message to `address` on stream 0 (libsctp's sctp_sendmsg); bytes sent or -1 with errno.
ssize_t tshim_sctp_send(int fd, const void *bytes, size_t length, const struct sockaddr *address, socklen_t address_length);
/// One SIP message from any association (libsctp's sctp_recvmsg); bytes or -1 with errno.
/// *notification is 1 when what arrived is an SCTP notification rather than data.
ssize_t tshim_sctp_receive(int fd, void *buffer, size_t capacity, struct sockaddr_storage *from, socklen_t *from_length, int *notification);

/// Returns the free pages of every malloc arena to the kernel (glibc's malloc_trim).
int tshim_malloc_trim(void);
/// Lets the malloc heaps keep up to `bytes` freed at their top rather than hand them back at once.
void tshim_keep_freed_memory(size_t bytes);
void tshim_reserve_heap(size_t bytes);

#endif
