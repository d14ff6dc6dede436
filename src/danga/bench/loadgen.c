/* danga benchmark load generator: a small epoll client.
 *
 * Opens N connections to HOST:PORT and keeps K messages of S bytes in flight on each
 * (K = 1 is ping-pong). Every echoed byte is compared with what was sent: the stream of
 * connection c is a fixed pseudo-random table read from an offset that depends on c, so a
 * reordered, duplicated or corrupted byte is caught. A mismatch exits with status 3.
 *
 * Phases: connect, warm up, sample the server's RSS, open M idle connections (and wait
 * until the server holds them, counting /proc/PID/fd), sample RSS again, warm up, then
 * measure for D seconds: round trips, our own CPU and the server's CPU (/proc/PID/stat).
 * SIGUSR1 prints {"tick": round_trips_so_far} (used to align an strace window).
 * The result is one JSON line on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PERIOD 65521u
#define CHUNK 65536u

typedef struct { int fd; uint64_t sent, recvd; int want_out; } conn_t;

static unsigned char table[PERIOD + CHUNK];
static unsigned char rbuf[CHUNK];
static volatile sig_atomic_t tick_wanted = 0;
static uint64_t total_msgs = 0;

static void on_usr1(int sig) { (void)sig; tick_wanted = 1; }

static double now(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno)); exit(2);
}

static int open_conn(const char *host, int port) {
    struct sockaddr_in sa; memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET; sa.sin_port = htons(port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    int one = 1; setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* RST on exit: thousands of connections must not leave TIME_WAIT ports behind. */
    struct linger lg = {1, 0}; setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    return fd;
}

static long proc_fd_count(int pid) {
    char path[64]; snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path); if (!d) return -1;
    long n = 0; struct dirent *e;
    while ((e = readdir(d))) if (e->d_name[0] != '.') n++;
    closedir(d); return n;
}

static long proc_rss(int pid) { /* bytes */
    char path[64], line[256]; snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r"); if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f)) if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    fclose(f); return kb < 0 ? -1 : kb * 1024;
}

static int proc_cpu(int pid, double *user, double *sys) {
    char path[64], buf[1024]; snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r"); if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f); fclose(f); buf[n] = 0;
    char *p = strrchr(buf, ')'); if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
    double hz = (double)sysconf(_SC_CLK_TCK);
    *user = ut / hz; *sys = st / hz; return 0;
}

static void set_out(int ep, conn_t *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event ev; ev.events = EPOLLIN | (on ? EPOLLOUT : 0); ev.data.ptr = c;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = on;
}

static uint64_t size_s, depth_k;

static void pump(int ep, conn_t *c, unsigned idx) {
    uint64_t allowed = (c->recvd / size_s) * size_s + depth_k * size_s;
    while (c->sent < allowed) {
        uint64_t len = allowed - c->sent; if (len > CHUNK) len = CHUNK;
        ssize_t w = send(c->fd, table + (c->sent + idx * 977u) % PERIOD, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) { set_out(ep, c, 1); return; }
            if (errno == EINTR) continue;
            die("send");
        }
        c->sent += (uint64_t)w;
    }
    set_out(ep, c, 0);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1"; int port = 0, conns = 10, pid = 0; long idle = 0;
    double warmup = 0.5, duration = 2.0;
    size_s = 64; depth_k = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--conns")) conns = atoi(v);
        else if (!strcmp(k, "--size")) size_s = strtoull(v, 0, 10);
        else if (!strcmp(k, "--pipeline")) depth_k = strtoull(v, 0, 10);
        else if (!strcmp(k, "--warmup")) warmup = atof(v);
        else if (!strcmp(k, "--duration")) duration = atof(v);
        else if (!strcmp(k, "--idle")) idle = atol(v);
        else if (!strcmp(k, "--server-pid")) pid = atoi(v);
        else { fprintf(stderr, "loadgen: unknown option %s\n", k); return 2; }
    }
    if (!port || conns < 1 || size_s < 1 || depth_k < 1) { fprintf(stderr, "loadgen: bad arguments\n"); return 2; }
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < sizeof table; i++) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; table[i] = (unsigned char)x; }
    for (size_t i = PERIOD; i < sizeof table; i++) table[i] = table[i - PERIOD];
    signal(SIGUSR1, on_usr1);

    int ep = epoll_create1(0); if (ep < 0) die("epoll_create1");
    conn_t *cs = calloc(conns, sizeof *cs);
    for (int i = 0; i < conns; i++) {
        cs[i].fd = open_conn(host, port);
        fcntl(cs[i].fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev; ev.events = EPOLLIN; ev.data.ptr = &cs[i];
        if (epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev) < 0) die("epoll_ctl add");
    }
    struct epoll_event *evs = calloc(conns, sizeof *evs);
    for (int i = 0; i < conns; i++) pump(ep, &cs[i], i);

    long rss0 = -1, rss1 = -1, idle_ok = 0;
    int phase = 0; /* 0 warm1, 1 warm2, 2 measuring */
    double t0 = now(), phase_end = t0 + warmup / 2, t_start = 0, t_end = 0;
    double su0 = 0, ss0 = 0, su1 = 0, ss1 = 0;
    struct rusage ru0, ru1;
    uint64_t msgs_at_start = 0;
    for (;;) {
        int n = epoll_wait(ep, evs, conns, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int e = 0; e < n; e++) {
            conn_t *c = evs[e].data.ptr; unsigned idx = (unsigned)(c - cs);
            if (evs[e].events & EPOLLIN) {
                ssize_t r = recv(c->fd, rbuf, CHUNK, 0);
                if (r == 0) { fprintf(stderr, "loadgen: the server closed connection %u\n", idx); return 2; }
                if (r < 0) {
                    if (errno != EAGAIN && errno != EINTR) die("recv");
                } else {
                    if (c->recvd + (uint64_t)r > c->sent) { fprintf(stderr, "loadgen: connection %u received more than was sent\n", idx); return 3; }
                    if (memcmp(rbuf, table + (c->recvd + idx * 977u) % PERIOD, (size_t)r)) {
                        fprintf(stderr, "loadgen: echoed bytes differ on connection %u at offset %llu\n", idx, (unsigned long long)c->recvd);
                        return 3;
                    }
                    uint64_t before = c->recvd / size_s;
                    c->recvd += (uint64_t)r;
                    total_msgs += c->recvd / size_s - before;
                }
            } else if (evs[e].events & (EPOLLERR | EPOLLHUP)) {
                fprintf(stderr, "loadgen: connection %u failed\n", idx); return 2;
            }
            pump(ep, c, idx);
        }
        if (tick_wanted) { tick_wanted = 0; printf("{\"tick\": %llu}\n", (unsigned long long)total_msgs); fflush(stdout); }
        double t = now();
        if (t < phase_end) continue;
        if (phase == 0) {
            if (pid) rss0 = proc_rss(pid);
            if (idle > 0) {
                long base = pid ? proc_fd_count(pid) : 0;
                for (long i = 0; i < idle; i++) open_conn(host, port);
                if (pid) {
                    double deadline = now() + 60;
                    while (proc_fd_count(pid) < base + idle && now() < deadline) usleep(2000);
                    idle_ok = proc_fd_count(pid) >= base + idle;
                    usleep(100000);  /* let the server finish what accepting started */
                }
            }
            if (pid) rss1 = proc_rss(pid);
            phase = 1; phase_end = now() + warmup / 2;
        } else if (phase == 1) {
            phase = 2; t_start = now(); phase_end = t_start + duration;
            msgs_at_start = total_msgs; getrusage(RUSAGE_SELF, &ru0);
            if (pid) proc_cpu(pid, &su0, &ss0);
        } else {
            t_end = now(); getrusage(RUSAGE_SELF, &ru1);
            if (pid) proc_cpu(pid, &su1, &ss1);
            break;
        }
    }
    double secs = t_end - t_start;
    uint64_t msgs = total_msgs - msgs_at_start;
    double cu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
    double cs_ = (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    printf("{\"loadgen\": \"c\", \"messages\": %llu, \"seconds\": %.6f, \"rt_per_s\": %.1f, "
           "\"bytes_per_s\": %.1f, \"client_user\": %.4f, \"client_sys\": %.4f, "
           "\"server_user\": %.4f, \"server_sys\": %.4f, \"rss0\": %ld, \"rss1\": %ld, "
           "\"idle\": %ld, \"idle_ok\": %s}\n",
           (unsigned long long)msgs, secs, msgs / secs, msgs * (double)size_s / secs, cu, cs_,
           su1 - su0, ss1 - ss0, rss0, rss1, idle, (idle == 0 || idle_ok) ? "true" : "false");
    fflush(stdout);
    return 0;
}
