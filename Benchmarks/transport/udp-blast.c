/* Load for the transport benchmark: sends 500-byte datagrams to 127.0.0.1:TARGET in sendmmsg
 * batches for SECONDS (at most LIMIT datagrams), while counting what arrives on 127.0.0.1:SINK.
 * Usage: udp-blast TARGET SINK SECONDS LIMIT   Prints: `sent N received M`. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32
#define SIZE 500

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static int udp_socket(int port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int big = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("bind"); exit(1); }
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s TARGET SINK SECONDS LIMIT\n", argv[0]); return 2; }
    int target = atoi(argv[1]), sink = atoi(argv[2]);
    double seconds = atof(argv[3]);
    long limit = atol(argv[4]);
    int out = udp_socket(0), in = udp_socket(sink);
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(target), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    static char payload[BATCH][SIZE], incoming[BATCH][2048];
    struct mmsghdr smsg[BATCH], rmsg[BATCH];
    struct iovec siov[BATCH], riov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        memset(payload[i], 'x', SIZE);
        siov[i] = (struct iovec){ payload[i], SIZE };
        smsg[i] = (struct mmsghdr){ .msg_hdr = { .msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &siov[i], .msg_iovlen = 1 } };
        riov[i] = (struct iovec){ incoming[i], sizeof incoming[i] };
        rmsg[i] = (struct mmsghdr){ .msg_hdr = { .msg_iov = &riov[i], .msg_iovlen = 1 } };
    }
    long sent = 0, received = 0;
    double start = now(), end = start + seconds;
    while (now() < end && sent < limit) {
        int n = sendmmsg(out, smsg, BATCH, 0);
        if (n > 0) sent += n;
        int r;
        while ((r = recvmmsg(in, rmsg, BATCH, MSG_DONTWAIT, NULL)) > 0) received += r;
    }
    double drain = now() + 0.3;
    while (now() < drain) {
        int r = recvmmsg(in, rmsg, BATCH, MSG_DONTWAIT, NULL);
        if (r > 0) received += r; else usleep(1000);
    }
    printf("sent %ld received %ld\n", sent, received);
    return 0;
}
