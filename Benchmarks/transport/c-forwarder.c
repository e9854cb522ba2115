/* The reference for the transport benchmark: a plain C loop that forwards every datagram arriving
 * on 127.0.0.1:LISTEN to 127.0.0.1:SINK with epoll + recvmmsg + sendmmsg, BATCH per call.
 * Usage: c-forwarder LISTEN SINK BATCH   (runs until killed) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s LISTEN SINK BATCH\n", argv[0]); return 2; }
    int listen_port = atoi(argv[1]), sink = atoi(argv[2]), batch = atoi(argv[3]);
    if (batch > 64) batch = 64;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int big = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(listen_port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("bind"); return 1; }
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(sink), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    static char buffers[64][65536];
    struct mmsghdr msgs[64];
    struct iovec iov[64];
    struct sockaddr_storage from[64];
    for (;;) {
        struct epoll_event events[8];
        if (epoll_wait(ep, events, 8, -1) <= 0) continue;
        for (int round = 0; round < 8; round++) {
            for (int i = 0; i < batch; i++) {
                iov[i] = (struct iovec){ buffers[i], sizeof buffers[i] };
                msgs[i] = (struct mmsghdr){ .msg_hdr = { .msg_name = &from[i], .msg_namelen = sizeof from[i], .msg_iov = &iov[i], .msg_iovlen = 1 } };
            }
            int n = recvmmsg(fd, msgs, batch, MSG_DONTWAIT, NULL);
            if (n <= 0) break;
            for (int i = 0; i < n; i++) {
                iov[i].iov_len = msgs[i].msg_len;
                msgs[i].msg_hdr.msg_name = &to;
                msgs[i].msg_hdr.msg_namelen = sizeof to;
            }
            sendmmsg(fd, msgs, n, 0);
            if (n < batch) break;
        }
    }
}
