/* TLS load generator for benchmarks/tls_bench.py: a small epoll client on OpenSSL.
 *
 * Every connection is TLS 1.3 with one cipher suite (--ciphersuite), no session
 * resumption, no certificate check (the client's cost must stay small next to the
 * server's). Modes:
 *
 *   echo       N connections each keep one S-byte message in flight (ping-pong); every
 *              echoed byte is compared with what was sent (exit 3 on a mismatch).
 *              Warm up W s, then measure D s: round trips, bytes, the server's CPU.
 *   handshake  N slots, each in a loop: connect, full handshake, a 1-byte echo (so the
 *              server has finished its side), close_notify, close. Warm up, then count
 *              the connections completed in D s.
 *   idle       Sample the server's RSS, open N connections one by one (handshake and a
 *              1-byte echo each), wait until the server holds them (/proc/PID/fd), sample
 *              RSS again: the delta per connection.
 *
 * The result is one JSON line on stdout.
 * Build: cc -O2 -o tls_loadgen tls_loadgen.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct { int fd; SSL *ssl; int state; size_t out_left, in_got; int want_out; } conn_t;
enum { HANDSHAKE, ECHO };

static SSL_CTX *ctx;
static int port, server_pid;
static size_t size = 64;
static unsigned char *msg, rbuf[1 << 17];

static double now(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "tls_loadgen: %s: %s\n", what, strerror(errno));
    ERR_print_errors_fp(stderr);
    exit(2);
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

static double self_cpu(void) { /* our own user + system seconds */
    struct rusage ru; getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6
         + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static double proc_cpu(int pid) { /* user + system seconds */
    char path[64], buf[1024]; snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r"); if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f); fclose(f); buf[n] = 0;
    char *p = strrchr(buf, ')'); if (!p) return -1;
    unsigned long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int tcp_connect(void) {
    struct sockaddr_in sa; memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET; sa.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    int one = 1; setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* RST on close: thousands of connections must not leave TIME_WAIT ports behind. */
    struct linger lg = {1, 0}; setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static void conn_open(int ep, conn_t *c) {
    c->fd = tcp_connect();
    c->ssl = SSL_new(ctx);
    if (!c->ssl) die("SSL_new");
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    c->state = HANDSHAKE; c->out_left = 0; c->in_got = 0; c->want_out = 0;
    struct epoll_event ev; ev.events = EPOLLIN; ev.data.ptr = c;
    if (ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl add");
}

static void conn_close(conn_t *c) {
    SSL_shutdown(c->ssl); /* our close_notify; the peer's answer is not awaited */
    SSL_free(c->ssl); close(c->fd); c->ssl = NULL; c->fd = -1;
}

static void set_out(int ep, conn_t *c, int on) {
    if (ep < 0 || c->want_out == on) return;
    struct epoll_event ev; ev.events = EPOLLIN | (on ? EPOLLOUT : 0); ev.data.ptr = c;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
    c->want_out = on;
}

/* Is this SSL error "try again later"? Sets *out when OpenSSL needs writability. */
static int again(conn_t *c, int ret, int *out) {
    int e = SSL_get_error(c->ssl, ret);
    if (e == SSL_ERROR_WANT_READ) return 1;
    if (e == SSL_ERROR_WANT_WRITE) { *out = 1; return 1; }
    fprintf(stderr, "tls_loadgen: TLS error %d (errno %s)\n", e, strerror(errno));
    ERR_print_errors_fp(stderr);
    exit(2);
}

/* Drive one connection as far as it goes without blocking. Returns how many messages
 * (round trips) it completed. */
static uint64_t pump(int ep, conn_t *c, size_t msg_size) {
    uint64_t done = 0; int out = 0;
    if (c->state == HANDSHAKE) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) { again(c, r, &out); set_out(ep, c, out); return 0; }
        c->state = ECHO; c->out_left = msg_size; c->in_got = 0;
    }
    for (;;) {
        int progress = 0;
        if (c->out_left) {
            int n = SSL_write(c->ssl, msg + (msg_size - c->out_left), (int)c->out_left);
            if (n > 0) { c->out_left -= (size_t)n; progress = 1; }
            else again(c, n, &out);
        }
        /* Read until OpenSSL has nothing left: plaintext it holds is invisible to epoll. */
        int n = SSL_read(c->ssl, rbuf, sizeof rbuf);
        if (n > 0) {
            if (c->in_got + (size_t)n > msg_size || memcmp(rbuf, msg + c->in_got, (size_t)n)) {
                fprintf(stderr, "tls_loadgen: wrong bytes echoed\n"); exit(3);
            }
            c->in_got += (size_t)n; progress = 1;
            if (c->in_got == msg_size) { done++; c->out_left = msg_size; c->in_got = 0; }
        } else {
            again(c, n, &out);
        }
        if (!progress) break;
        if (done && msg_size == 1) break; /* handshake mode: one echo per connection */
    }
    set_out(ep, c, out);
    return done;
}

static void usage(void) {
    fprintf(stderr, "usage: tls_loadgen --mode echo|handshake|idle --port P --server-pid PID "
                    "[--conns N] [--size S] [--warmup W] [--duration D] "
                    "[--ciphersuite NAME]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *mode = "echo", *suite = "TLS_AES_128_GCM_SHA256";
    int conns = 10; double warmup = 0.5, duration = 2.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--mode")) mode = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--server-pid")) server_pid = atoi(v);
        else if (!strcmp(k, "--conns")) conns = atoi(v);
        else if (!strcmp(k, "--size")) size = strtoull(v, 0, 10);
        else if (!strcmp(k, "--warmup")) warmup = atof(v);
        else if (!strcmp(k, "--duration")) duration = atof(v);
        else if (!strcmp(k, "--ciphersuite")) suite = v;
        else usage();
    }
    if (!port || !server_pid || conns < 1 || size < 1) usage();
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    if (!SSL_CTX_set_ciphersuites(ctx, suite)) die("SSL_CTX_set_ciphersuites");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    struct rlimit rl; getrlimit(RLIMIT_NOFILE, &rl); rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    int handshake = !strcmp(mode, "handshake");
    if (handshake) size = 1;
    msg = malloc(size);
    for (size_t i = 0; i < size; i++) msg[i] = (unsigned char)(i * 131u + 7u);
    conn_t *cs = calloc((size_t)conns, sizeof *cs);

    if (!strcmp(mode, "idle")) {
        long fds0 = proc_fd_count(server_pid), rss0 = proc_rss(server_pid);
        for (int i = 0; i < conns; i++) {
            conn_open(-1, &cs[i]);
            while (!pump(-1, &cs[i], 1)) { /* a blocking-style loop: one at a time */
                struct pollfd pfd = {cs[i].fd, POLLIN, 0};
                if (poll(&pfd, 1, 5000) <= 0) die("idle handshake");
            }
        }
        double deadline = now() + 10;
        while (proc_fd_count(server_pid) < fds0 + conns && now() < deadline) usleep(2000);
        long held = proc_fd_count(server_pid) - fds0;
        long rss1 = proc_rss(server_pid);
        printf("{\"mode\":\"idle\",\"conns\":%d,\"held\":%ld,\"rss0\":%ld,\"rss1\":%ld,"
               "\"bytes_per_conn\":%.1f}\n", conns, held, rss0, rss1,
               (double)(rss1 - rss0) / conns);
        return held >= conns ? 0 : 4;
    }
    if (strcmp(mode, "echo") && !handshake) usage();

    int ep = epoll_create1(0); if (ep < 0) die("epoll_create1");
    for (int i = 0; i < conns; i++) { conn_open(ep, &cs[i]); pump(ep, &cs[i], size); }
    struct epoll_event *evs = calloc((size_t)conns, sizeof *evs);
    uint64_t count = 0, at_start = 0;
    int measuring = 0;
    double t0 = now(), t_start = 0, cpu0 = 0, self0 = 0, t_end = t0 + warmup + duration;
    for (;;) {
        double t = now();
        if (!measuring && t >= t0 + warmup) {
            measuring = 1; t_start = t; at_start = count; cpu0 = proc_cpu(server_pid);
            self0 = self_cpu();
        }
        if (t >= t_end) break;
        int n = epoll_wait(ep, evs, conns, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            uint64_t done = pump(ep, c, size);
            count += done;
            /* The next connection's first step can complete it at once (a fast server). */
            while (handshake && done) {
                conn_close(c); conn_open(ep, c);
                count += done = pump(ep, c, size);
            }
        }
    }
    double secs = now() - t_start, cpu = proc_cpu(server_pid) - cpu0;
    double client = (self_cpu() - self0) / secs;
    uint64_t k = count - at_start;
    printf("{\"mode\":\"%s\",\"conns\":%d,\"size\":%zu,\"seconds\":%.4f,\"count\":%llu,"
           "\"per_s\":%.1f,\"mb_per_s\":%.3f,\"server_cpu\":%.4f,\"server_cpu_us\":%.2f,"
           "\"server_busy\":%.3f,\"client_cpu\":%.3f}\n",
           mode, conns, size, secs, (unsigned long long)k, k / secs,
           handshake ? 0.0 : k * (double)size / secs / 1e6, cpu,
           k ? cpu / k * 1e6 : 0.0, cpu / secs, client);
    return 0;
}
