// sgcheck: runs one network check inside the e2e test guest and prints one
// line on the console: "SGCHECK <kind> <target> <result> [details]".
// Built statically by tests/e2e/build-guest.sh; /init calls it once per item
// of the kernel command line's sgcheck= list.
//
//   ready:GW                 ping GW until it answers (20 s): the link works
//   ping:ADDR                one ICMP echo; ok when answered in 1.5 s
//   tcp:ADDR:PORT            ok when connected or refused (the SYN reached
//                            the destination), fail when it timed out
//   udp:ADDR:PORT            ok when answered or refused (ICMP port
//                            unreachable came back), fail when silent
//   spoof:SRC:DST:PORT       sends 3 UDP datagrams from SRC, an address that
//                            is not the guest's; prints "sent" (a one-way
//                            packet is seen dropped at DST, not from here)
//   wait:ADDR:PORT:SECS[:PADDR:PPORT]
//                            barrier: waits until a TCP connect to ADDR:PORT
//                            succeeds (a listener appeared); meanwhile tries
//                            PADDR:PPORT over and over and counts how often
//                            that forbidden destination answered ("leaked")
//
// IPv6 addresses are written in brackets: tcp:[2001:db8:e::2]:80.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FIELDS 8

static void report(const char* kind, const char* target, const char* result, const char* details) {
  char line[512];
  int n = snprintf(line, sizeof line, "SGCHECK %s %s %s%s%s\n", kind, target, result, details[0] ? " " : "", details);
  // One write per line, so kernel messages cannot split it.
  if (n > 0) (void)!write(1, line, (size_t)n);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

// Splits "a:[b:c]:d" into fields at colons outside brackets; strips brackets.
static int split(char* s, char** out) {
  int n = 0;
  char* p = s;
  while (*p && n < MAX_FIELDS) {
    if (*p == '[') {
      char* end = strchr(p, ']');
      if (!end) return -1;
      *end = '\0';
      out[n++] = p + 1;
      p = end + 1;
      if (*p == ':') p++;
      continue;
    }
    out[n++] = p;
    char* c = strchr(p, ':');
    if (!c) break;
    *c = '\0';
    p = c + 1;
  }
  return n;
}

static int make_addr(const char* text, int port, struct sockaddr_storage* ss, socklen_t* len) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in* v4 = (struct sockaddr_in*)ss;
  struct sockaddr_in6* v6 = (struct sockaddr_in6*)ss;
  if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    *len = sizeof *v4;
    return 0;
  }
  if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    *len = sizeof *v6;
    return 0;
  }
  return -1;
}

static int wait_fd(int fd, short events, int timeout_ms) {
  struct pollfd p = {fd, events, 0};
  return poll(&p, 1, timeout_ms);
}

// 0 connected, 1 refused, 2 timed out, -1 error.
static int tcp_try(const char* addr, int port, int timeout_ms) {
  struct sockaddr_storage ss;
  socklen_t len;
  if (make_addr(addr, port, &ss, &len) != 0) return -1;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int rc;
  if (connect(fd, (struct sockaddr*)&ss, len) == 0) {
    rc = 0;
  } else if (errno == ECONNREFUSED) {
    rc = 1;
  } else if (errno != EINPROGRESS) {
    rc = -1;
  } else if (wait_fd(fd, POLLOUT, timeout_ms) <= 0) {
    rc = 2;
  } else {
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    rc = err == 0 ? 0 : err == ECONNREFUSED ? 1 : err == ETIMEDOUT || err == EHOSTUNREACH ? 2 : -1;
  }
  close(fd);
  return rc;
}

static uint16_t checksum(const void* data, size_t len) {
  const uint8_t* b = data;
  uint32_t sum = 0;
  for (size_t i = 0; i + 1 < len; i += 2) sum += (uint32_t)(b[i] << 8 | b[i + 1]);
  if (len & 1) sum += (uint32_t)(b[len - 1] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return htons((uint16_t)~sum);
}

// One ICMP echo; 1 when answered within timeout_ms.
static int ping_once(const char* addr, int timeout_ms, uint16_t seq) {
  struct sockaddr_storage ss;
  socklen_t len;
  if (make_addr(addr, 0, &ss, &len) != 0) return -1;
  int v6 = ss.ss_family == AF_INET6;
  int fd = socket(ss.ss_family, SOCK_RAW | SOCK_CLOEXEC, v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP);
  if (fd < 0) return -1;
  uint16_t id = (uint16_t)getpid();
  unsigned char pkt[64] = {0};
  if (v6) {
    struct icmp6_hdr* h = (struct icmp6_hdr*)pkt;
    h->icmp6_type = ICMP6_ECHO_REQUEST;
    h->icmp6_id = htons(id);
    h->icmp6_seq = htons(seq);  // the kernel fills in the ICMPv6 checksum
  } else {
    struct icmphdr* h = (struct icmphdr*)pkt;
    h->type = ICMP_ECHO;
    h->un.echo.id = htons(id);
    h->un.echo.sequence = htons(seq);
    h->checksum = checksum(pkt, sizeof pkt);
  }
  int answered = 0;
  if (sendto(fd, pkt, sizeof pkt, 0, (struct sockaddr*)&ss, len) == (ssize_t)sizeof pkt) {
    double deadline = now_s() + timeout_ms / 1000.0;
    while (!answered) {
      int left = (int)((deadline - now_s()) * 1000);
      if (left <= 0 || wait_fd(fd, POLLIN, left) <= 0) break;
      unsigned char buf[1500];
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) continue;
      if (v6) {
        struct icmp6_hdr* h = (struct icmp6_hdr*)buf;
        answered = n >= 8 && h->icmp6_type == ICMP6_ECHO_REPLY && ntohs(h->icmp6_id) == id;
      } else {
        size_t ihl = (size_t)(buf[0] & 0x0f) * 4;  // raw IPv4 sockets see the IP header
        struct icmphdr* h = (struct icmphdr*)(buf + ihl);
        answered = (size_t)n >= ihl + 8 && h->type == ICMP_ECHOREPLY && ntohs(h->un.echo.id) == id;
      }
    }
  }
  close(fd);
  return answered;
}

// 0 answered or refused, 2 silent, -1 error.
static int udp_try(const char* addr, int port, int timeout_ms) {
  struct sockaddr_storage ss;
  socklen_t len;
  if (make_addr(addr, port, &ss, &len) != 0) return -1;
  int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr*)&ss, len) != 0) return -1;
  int rc = 2;
  if (send(fd, "sgcheck", 7, 0) < 0) {
    rc = errno == ECONNREFUSED ? 0 : -1;
  } else if (wait_fd(fd, POLLIN, timeout_ms) > 0) {
    char buf[64];
    rc = (recv(fd, buf, sizeof buf, 0) >= 0 || errno == ECONNREFUSED) ? 0 : -1;
  }
  close(fd);
  return rc;
}

static int run_ip(const char* verb, const char* addr) {
  char cidr[80];
  snprintf(cidr, sizeof cidr, "%s/%s", addr, strchr(addr, ':') ? "128" : "32");
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/busybox", "ip", "addr", verb, cidr, "dev", "eth0", (char*)NULL);
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

static int spoof(const char* src, const char* dst, int port) {
  struct sockaddr_storage from, to;
  socklen_t flen, tlen;
  if (make_addr(src, 0, &from, &flen) != 0 || make_addr(dst, port, &to, &tlen) != 0) return -1;
  // The kernel sends from an address only when the guest owns it: claim it
  // for the moment (what a malicious guest would do).
  if (run_ip("add", src) != 0) return -1;
  usleep(200 * 1000);
  int sent = 0;
  int fd = socket(from.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && bind(fd, (struct sockaddr*)&from, flen) == 0) {
    for (int i = 0; i < 3; ++i) {
      if (sendto(fd, "spoofed", 7, 0, (struct sockaddr*)&to, tlen) == 7) sent++;
      usleep(50 * 1000);
    }
  }
  if (fd >= 0) close(fd);
  run_ip("del", src);
  return sent;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: sgcheck KIND:ARGS (see the source)\n");
    return 64;
  }
  char spec[256];
  snprintf(spec, sizeof spec, "%s", argv[1]);
  char* f[MAX_FIELDS] = {0};
  int n = split(spec, f);
  if (n < 2) {
    report("bad", argv[1], "error", "");
    return 64;
  }
  const char* kind = f[0];
  char target[160];
  if (n >= 3 && strcmp(kind, "spoof") != 0) {
    snprintf(target, sizeof target, strchr(f[1], ':') ? "[%s]:%s" : "%s:%s", f[1], f[2]);
  } else {
    snprintf(target, sizeof target, "%s", f[1]);
  }

  if (strcmp(kind, "ready") == 0) {
    double deadline = now_s() + 20;
    for (uint16_t seq = 1; now_s() < deadline; ++seq) {
      if (ping_once(f[1], 500, seq) == 1) {
        report(kind, target, "ok", "");
        return 0;
      }
    }
    report(kind, target, "fail", "");
    return 1;
  }
  if (strcmp(kind, "ping") == 0) {
    int r = ping_once(f[1], 1500, 1);
    report(kind, target, r == 1 ? "ok" : r == 0 ? "fail" : "error", "");
    return r == 1 ? 0 : 1;
  }
  if (strcmp(kind, "tcp") == 0 && n == 3) {
    int r = tcp_try(f[1], atoi(f[2]), 1500);
    report(kind, target, r == 0 || r == 1 ? "ok" : r == 2 ? "fail" : "error", r == 1 ? "refused" : "");
    return r == 0 || r == 1 ? 0 : 1;
  }
  if (strcmp(kind, "udp") == 0 && n == 3) {
    int r = udp_try(f[1], atoi(f[2]), 1500);
    report(kind, target, r == 0 ? "ok" : r == 2 ? "fail" : "error", "");
    return r == 0 ? 0 : 1;
  }
  if (strcmp(kind, "spoof") == 0 && n == 4) {
    snprintf(target, sizeof target, "%s->%s:%s", f[1], f[2], f[3]);
    int r = spoof(f[1], f[2], atoi(f[3]));
    char details[32];
    snprintf(details, sizeof details, "count=%d", r < 0 ? 0 : r);
    report(kind, target, r > 0 ? "sent" : "error", details);
    return r > 0 ? 0 : 1;
  }
  if (strcmp(kind, "wait") == 0 && (n == 4 || n == 6)) {
    double deadline = now_s() + atoi(f[3]);
    int probes = 0, leaked = 0, done = 0;
    while (!done && now_s() < deadline) {
      if (n == 6) {
        probes++;
        int r = tcp_try(f[4], atoi(f[5]), 150);
        if (r == 0 || r == 1) leaked++;
      }
      int r = tcp_try(f[1], atoi(f[2]), 300);
      if (r == 0) {
        done = 1;
      } else if (r == 1 || r < 0) {
        usleep(150 * 1000);  // no listener yet, or the link is down for now
      }
    }
    char details[64];
    snprintf(details, sizeof details, "probes=%d leaked=%d", probes, leaked);
    report(kind, target, done ? "ok" : "fail", n == 6 ? details : "");
    return done ? 0 : 1;
  }
  report(kind, target, "error", "unknown check");
  return 64;
}
