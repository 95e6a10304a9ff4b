/* rusage_exec OUT CMD [ARGS...]: run CMD, wait for it, write its rusage to OUT.
 *
 * bench/run compiles this (cc -O2) and runs every client through it. Why not Python's own
 * os.wait4: a process forked (or vforked) from the ~30 MiB Python harness carries that
 * harness's peak RSS across exec (the kernel keeps the larger of the old and new images'
 * high-water marks in ru_maxrss), so every tool would show at least 30 MiB. Forking from this
 * tiny program instead gives the tool's true peak. wait4's rusage of a child includes the
 * children it waited for, so a `bash -c 'a | b'` pipeline reports the CPU of all of it and the
 * largest peak RSS among them.
 *
 * OUT gets one line: "maxrss_kib utime_s stime_s". The exit status is CMD's (128+signal if it
 * was killed).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: rusage_exec OUT CMD [ARGS...]\n");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("rusage_exec: fork");
        return 126;
    }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror("rusage_exec: exec");
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) {
            perror("rusage_exec: wait4");
            return 126;
        }
    }
    FILE *f = fopen(argv[1], "w");
    if (f) {
        fprintf(f, "%ld %ld.%06ld %ld.%06ld\n", ru.ru_maxrss, (long)ru.ru_utime.tv_sec,
                (long)ru.ru_utime.tv_usec, (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec);
        fclose(f);
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}
