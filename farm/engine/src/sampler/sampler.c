/*
 * farm-sampler: the on-device power sampler of farm.
 *
 * Owns one job: take timestamped readings on the device, on CLOCK_MONOTONIC (the clock the
 * reference engine prints its phase markers on), at a stated rate, into a text file.
 *
 *   farm-sampler -n                                   print CLOCK_MONOTONIC in ns, exit
 *   farm-sampler [opts] -f FILE...                    read FILEs every period (sysfs, /proc/stat)
 *   farm-sampler [opts] -s -- CMD ARG...              run CMD once, timestamp each stdout line
 *   farm-sampler [opts] -x -- CMD ARG...              run CMD every period (vcgencmd)
 *
 *   -r HZ       target rate (files / repeat modes), default 50
 *   -o OUT      output file (default stdout)
 *   -P PIDFILE  detach (setsid) and write the daemon's pid there once it runs
 *   -t SECONDS  stop by itself after this long (safety net if the host vanishes), default 3600
 *
 * Output: a header line "# farm-sampler 1 mode=... rate_hz=... clock=monotonic", then one line per
 * reading "T_NS<TAB>field<TAB>field..." (files mode: the first line of each file, "NA" when
 * unreadable; command modes: one stdout line of the command), then "# end samples=N missed=M".
 * SIGTERM/SIGINT end the run cleanly. Files are re-opened for each reading because a sysfs
 * attribute is refreshed per open and a replaced regular file (test labs) must be seen anew.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t g_stop = 0;
static pid_t g_child = 0;

static void on_signal(int sig) { (void)sig; g_stop = 1; }

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(int64_t t) {
    struct timespec ts = {(time_t)(t / 1000000000LL), (long)(t % 1000000000LL)};
    /* EINTR ends the wait early on purpose: the caller checks g_stop. */
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

/* First line of a file, trailing blanks stripped; "NA" when it cannot be read. */
static void read_first_line(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, cap - 1);
    if (fd >= 0) close(fd);
    if (n <= 0) { snprintf(buf, cap, "NA"); return; }
    buf[n] = 0;
    char *nl = strchr(buf, '\n');
    if (nl) *nl = 0;
    size_t len = strlen(buf);
    while (len && (buf[len - 1] == ' ' || buf[len - 1] == '\r' || buf[len - 1] == '\t')) buf[--len] = 0;
    for (char *p = buf; *p; p++) if (*p == '\t') *p = ' ';
}

static pid_t spawn(char **argv, int *out_fd) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execvp(argv[0], argv);
        fprintf(stderr, "farm-sampler: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    *out_fd = fds[0];
    return pid;
}

/* Emit every complete line in buf[0..*len) with timestamp t; keep a partial tail. */
static long emit_lines(FILE *out, char *buf, size_t *len, int64_t t) {
    long lines = 0;
    char *start = buf, *nl;
    while ((nl = memchr(start, '\n', *len - (size_t)(start - buf))) != NULL) {
        *nl = 0;
        if (nl > start) { fprintf(out, "%lld\t%s\n", (long long)t, start); lines++; }
        start = nl + 1;
    }
    *len -= (size_t)(start - buf);
    memmove(buf, start, *len);
    return lines;
}

static int detach(const char *pidfile) {
    int sync_pipe[2];
    if (pipe(sync_pipe) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid > 0) { /* parent: wait until the daemon wrote its pid, so callers can read it at once */
        char c;
        close(sync_pipe[1]);
        ssize_t r = read(sync_pipe[0], &c, 1);
        _exit(r == 1 ? 0 : 1);
    }
    close(sync_pipe[0]);
    setsid();
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", pidfile);
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    if (rename(tmp, pidfile) != 0) return -1;
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) { dup2(devnull, 0); if (devnull > 2) close(devnull); }
    if (write(sync_pipe[1], "k", 1) != 1) return -1;
    close(sync_pipe[1]);
    return 0;
}

int main(int argc, char **argv) {
    double rate = 50.0, max_s = 3600.0;
    const char *out_path = NULL, *pidfile = NULL;
    char mode = 0;
    int opt;
    while ((opt = getopt(argc, argv, "+nr:o:P:t:fsx")) != -1) {
        switch (opt) {
        case 'n': printf("%lld\n", (long long)now_ns()); return 0;
        case 'r': rate = atof(optarg); break;
        case 'o': out_path = optarg; break;
        case 'P': pidfile = optarg; break;
        case 't': max_s = atof(optarg); break;
        case 'f': case 's': case 'x': mode = (char)opt; break;
        default: return 2;
        }
    }
    if (!mode || optind >= argc || rate <= 0) {
        fprintf(stderr, "usage: farm-sampler [-r HZ] [-o OUT] [-P PIDFILE] [-t S] (-f FILE...|-s|-x -- CMD...)\n");
        return 2;
    }
    FILE *out = stdout;
    if (out_path && !(out = fopen(out_path, "w"))) {
        fprintf(stderr, "farm-sampler: cannot write %s: %s\n", out_path, strerror(errno));
        return 1;
    }
    if (pidfile && detach(pidfile) != 0) { fprintf(stderr, "farm-sampler: cannot detach\n"); return 1; }
    static char iobuf[1 << 16];
    setvbuf(out, iobuf, _IOFBF, sizeof iobuf);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: blocking reads and sleeps must return on stop */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    const char *names[] = {[0] = "", ['f'] = "files", ['s'] = "stream", ['x'] = "repeat"};
    fprintf(out, "# farm-sampler 1 mode=%s rate_hz=%g clock=monotonic\n", names[(int)mode], rate);
    int64_t period = (int64_t)(1e9 / rate), t0 = now_ns(), deadline = t0 + (int64_t)(max_s * 1e9);
    int64_t next = t0, last_flush = t0;
    long samples = 0, missed = 0;
    char line[4096], buf[1 << 16];

    if (mode == 's') {
        int fd;
        g_child = spawn(argv + optind, &fd);
        if (g_child < 0) return 1;
        size_t len = 0;
        while (!g_stop && now_ns() < deadline) {
            ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            len += (size_t)n;
            int64_t t = now_ns(); /* the line is timestamped when it reaches us */
            samples += emit_lines(out, buf, &len, t);
            if (len == sizeof buf - 1) len = 0; /* an absurdly long line: drop it */
            if (t - last_flush > 1000000000LL) { fflush(out); last_flush = t; }
        }
        kill(-g_child, SIGTERM);
        waitpid(g_child, NULL, 0);
    } else {
        while (!g_stop && next < deadline) {
            int64_t t;
            if (mode == 'f') {
                t = now_ns();
                fprintf(out, "%lld", (long long)t);
                for (int i = optind; i < argc; i++) {
                    read_first_line(argv[i], line, sizeof line);
                    fprintf(out, "\t%s", line);
                }
                fputc('\n', out);
                samples++;
            } else {
                int fd;
                int64_t t_start = now_ns();
                pid_t pid = spawn(argv + optind, &fd);
                if (pid < 0) break;
                size_t len = 0;
                ssize_t n;
                while ((n = read(fd, buf + len, sizeof buf - 1 - len)) != 0) {
                    if (n < 0) { if (errno == EINTR) continue; break; }
                    len += (size_t)n;
                    if (len == sizeof buf - 1) break;
                }
                close(fd);
                waitpid(pid, NULL, 0);
                /* the reading happened somewhere inside the command: take the midpoint */
                t = t_start + (now_ns() - t_start) / 2;
                buf[len] = 0;
                if (len && buf[len - 1] != '\n') buf[len++] = '\n';
                if (emit_lines(out, buf, &len, t) > 0) samples++;
            }
            if (t - last_flush > 1000000000LL) { fflush(out); last_flush = t; }
            next += period;
            int64_t now = now_ns();
            if (now > next) { /* overrun: skip the lost periods instead of bursting to catch up */
                missed += (now - next) / period + 1;
                next += ((now - next) / period + 1) * period;
            }
            sleep_until(next);
        }
    }
    fprintf(out, "# end samples=%ld missed=%ld\n", samples, missed);
    fclose(out);
    return 0;
}
