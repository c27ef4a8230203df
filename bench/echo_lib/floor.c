#define _GNU_SOURCE
// The echo floor: the least work a readiness-based TCP echo server can do on this machine.
// One thread, epoll edge-triggered, non-blocking sockets. Per readable event it reads once
// into a 64 KiB buffer and writes the bytes straight back; a read that fills less than the
// buffer has drained the socket, so it does not read again to see EAGAIN (one read and one
// write per message, as keel does; tokio reads once more). What a write leaves over waits
// for EPOLLOUT. No buffer pool, no timers, no handler: keel echo is measured against it.
//
// usage: floor PORT   (0: any free port). Prints "listening tcp 127.0.0.1:PORT" on stdout.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { BUF = 65536 };

struct conn {
  int fd;
  size_t pending_off, pending_len; // bytes a short write left, in pending
  char *pending;
};

static void drop(struct conn *c) {
  close(c->fd);
  free(c->pending);
  free(c);
}

// Writes what is pending; 0 when all of it left, 1 when the socket is full, -1 on error.
static int flush(struct conn *c) {
  while (c->pending_len > 0) {
    ssize_t w = send(c->fd, c->pending + c->pending_off, c->pending_len, MSG_NOSIGNAL);
    if (w < 0) return errno == EAGAIN ? 1 : -1;
    c->pending_off += (size_t)w;
    c->pending_len -= (size_t)w;
  }
  return 0;
}

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_term};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  socklen_t alen = sizeof a;
  if (bind(ls, (void *)&a, sizeof a) || listen(ls, 4096) || getsockname(ls, (void *)&a, &alen)) {
    perror("bind/listen");
    return 1;
  }
  printf("listening tcp 127.0.0.1:%d\n", ntohs(a.sin_port));
  fflush(stdout);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, evs[256];
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  static char buf[BUF];
  while (!stop) {
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      if (c == NULL) {
        int fd;
        while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          c = calloc(1, sizeof *c);
          c->fd = fd;
          struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
        }
        continue;
      }
      if (c->pending_len > 0) {
        int f = flush(c);
        if (f < 0) { drop(c); continue; }
        if (f > 0) continue; // still full: read nothing more until it drains
      }
      for (;;) {
        ssize_t r = recv(c->fd, buf, BUF, 0);
        if (r < 0 && errno == EINTR) continue; // edge-triggered: stopping here would stall it
        if (r == 0 || (r < 0 && errno != EAGAIN)) { drop(c); break; }
        if (r < 0) break;
        ssize_t w = send(c->fd, buf, (size_t)r, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) { drop(c); break; }
        if (w < r) { // the socket is full: keep the rest for EPOLLOUT
          size_t left = (size_t)r - (size_t)(w < 0 ? 0 : w);
          c->pending = realloc(c->pending, left);
          memcpy(c->pending, buf + (r - (ssize_t)left), left);
          c->pending_off = 0;
          c->pending_len = left;
          break;
        }
        if (r < BUF) break; // drained
      }
    }
  }
  return 0;
}
