/* farm-pair: run two engine builds in lock step, one timed phase at a time, for A/B comparisons.
 *
 *   farm-pair [--first A|B] -- A_ARGV... -- B_ARGV...
 *
 * Each side is started with a "go" pipe on fd 3 and a "done" pipe on fd 4 (its argv should carry
 * `--lockstep 3,4`). The engine reads a byte from fd 3 before each timed phase (a repetition's
 * prefill, one decode step) and writes a byte to fd 4 after it. farm-pair hands out turns in the order
 * A B | B A | A B ... (ABBA at the granularity of one phase), so only one side computes at a time and the
 * two see the same host, frequency and thermal state milliseconds apart. A drift across a decode is
 * shared by both, and the alternation cancels its linear part and any first/second position effect.
 *
 * A side that has finished (its done pipe reaches end of file) gets no more turns; the other runs on
 * alone. At the end farm-pair prints {"interleave":"step","turns":[nA,nB],"A":<A's JSON>,"B":<B's JSON>}.
 * If a side fails, nothing is printed on stdout, one line "farm-pair: X ... " goes to stderr, and the exit
 * code is that side's (128+signal when killed). Bad usage exits 2. Both sides share this stderr. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define USAGE "usage: farm-pair [--first A|B] -- A_ARGV... -- B_ARGV..."

typedef struct {
    const char *name;
    char **argv;
    pid_t pid;
    int go, done, out; /* our ends: write go, read done, read stdout */
    int reaped, stopped, turns, status;
    char *buf;
    size_t len, cap;
} side_t;

static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("farm-pair: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

static void pipe_cloexec(int fds[2]) {
    if (pipe2(fds, O_CLOEXEC) != 0) die(1, "pipe: %s", strerror(errno));
}

/* Make `fd` the child's descriptor number `to`, without close-on-exec. */
static void place(int fd, int to) {
    if (fd == to) {
        if (fcntl(fd, F_SETFD, 0) != 0) _exit(127);
    } else if (dup2(fd, to) < 0) {
        _exit(127);
    }
}

static void start(side_t *s) {
    int go[2], done[2], out[2];
    pipe_cloexec(go);
    pipe_cloexec(done);
    pipe_cloexec(out);
    /* Keep the child's ends clear of 0..4, so placing one never overwrites another. */
    int ends[3] = {go[0], done[1], out[1]};
    for (int i = 0; i < 3; i++)
        if (ends[i] <= 4) {
            const int moved = fcntl(ends[i], F_DUPFD_CLOEXEC, 5);
            if (moved < 0) die(1, "fcntl: %s", strerror(errno));
            close(ends[i]);
            ends[i] = moved;
        }
    s->pid = fork();
    if (s->pid < 0) die(1, "fork: %s", strerror(errno));
    if (s->pid == 0) {
        place(ends[2], 1);
        place(ends[0], 3);
        place(ends[1], 4);
        execv(s->argv[0], s->argv);
        fprintf(stderr, "farm-pair: %s: cannot run %s: %s\n", s->name, s->argv[0], strerror(errno));
        _exit(127);
    }
    close(ends[0]);
    close(ends[1]);
    close(ends[2]);
    s->go = go[1];
    s->done = done[0];
    s->out = out[0];
}

/* Append whatever the side printed; 0 at end of file. */
static int drain(side_t *s) {
    if (s->len + 65536 > s->cap) {
        s->cap = (s->cap + 65536) * 2;
        s->buf = realloc(s->buf, s->cap);
        if (!s->buf) die(1, "out of memory");
    }
    ssize_t n;
    do n = read(s->out, s->buf + s->len, s->cap - s->len - 1);
    while (n < 0 && errno == EINTR);
    if (n < 0) die(1, "%s: read stdout: %s", s->name, strerror(errno));
    s->len += (size_t)n;
    s->buf[s->len] = 0;
    return n > 0;
}

/* One turn: let the side run one phase and wait until it reports it done (reading its stdout meanwhile,
 * so a large result cannot block it). Returns 0 when the side has no phase left. */
static int turn(side_t *s) {
    const char go = 'g';
    ssize_t n;
    do n = write(s->go, &go, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1) return 0; /* EPIPE: it has exited */
    for (;;) {
        struct pollfd p[2] = {{.fd = s->done, .events = POLLIN}, {.fd = s->out, .events = POLLIN}};
        const int nfds = s->out >= 0 ? 2 : 1;
        if (poll(p, (nfds_t)nfds, -1) < 0) {
            if (errno == EINTR) continue;
            die(1, "poll: %s", strerror(errno));
        }
        if (nfds == 2 && p[1].revents && !drain(s)) {
            close(s->out);
            s->out = -1;
        }
        if (p[0].revents) {
            char b;
            do n = read(s->done, &b, 1);
            while (n < 0 && errno == EINTR);
            s->turns += n == 1;
            return n == 1;
        }
    }
}

static void finish(side_t *s) {
    close(s->go);
    close(s->done);
    while (s->out >= 0)
        if (!drain(s)) {
            close(s->out);
            s->out = -1;
        }
    while (waitpid(s->pid, &s->status, 0) < 0)
        if (errno != EINTR) die(1, "waitpid: %s", strerror(errno));
    s->reaped = 1;
}

static int exit_code(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}

/* The side's JSON without surrounding whitespace (it prints one object and a newline). */
static const char *json_of(side_t *s) {
    if (!s->buf) return "";
    char *p = s->buf;
    while (isspace((unsigned char)*p)) p++;
    size_t n = strlen(p);
    while (n && isspace((unsigned char)p[n - 1])) p[--n] = 0;
    return p;
}

int main(int argc, char **argv) {
    int i = 1, b_first = 0;
    if (i + 1 < argc && !strcmp(argv[i], "--first")) {
        if (strcmp(argv[i + 1], "A") && strcmp(argv[i + 1], "B")) die(2, "--first must be A or B");
        b_first = !strcmp(argv[i + 1], "B");
        i += 2;
    }
    if (i >= argc || strcmp(argv[i], "--")) die(2, USAGE);
    const int a0 = ++i;
    while (i < argc && strcmp(argv[i], "--")) i++;
    if (i >= argc || i == a0 || i + 1 >= argc) die(2, USAGE);
    argv[i] = NULL; /* ends A's argv; B's runs to argv[argc] == NULL */
    side_t side[2] = {{.name = "A", .argv = argv + a0}, {.name = "B", .argv = argv + i + 1}};
    signal(SIGPIPE, SIG_IGN);
    start(&side[0]);
    start(&side[1]);
    /* Turns A B | B A | A B ... (or B A | A B ... with --first B) while either side has phases left. */
    for (long k = 0; !side[0].reaped || !side[1].reaped; k++) {
        const int first = (int)((k & 1) ^ b_first);
        for (int j = 0; j < 2; j++) {
            side_t *s = &side[j ? !first : first], *other = &side[j ? first : !first];
            if (s->reaped || turn(s)) continue;
            finish(s);
            if (exit_code(s->status) != 0 && !other->reaped) { /* no use going on */
                kill(other->pid, SIGKILL);
                other->stopped = 1;
            }
        }
    }
    for (int j = 0; j < 2; j++) { /* name the side that failed, not the one stopped because of it */
        const int code = exit_code(side[j].status);
        if (code != 0 && !side[j].stopped) die(code, "%s (%s) exited %d", side[j].name, side[j].argv[0], code);
    }
    if (side[0].turns != side[1].turns)
        die(3, "A and B ran %d and %d timed phases: not the same measurement", side[0].turns, side[1].turns);
    printf("{\"interleave\":\"step\",\"turns\":[%d,%d],\"A\":%s,\"B\":%s}\n", side[0].turns, side[1].turns,
           json_of(&side[0]), json_of(&side[1]));
    return 0;
}
