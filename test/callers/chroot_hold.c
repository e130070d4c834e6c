/*
 * test/ps.test.ts's chrooted process: chroot_hold HEXDIR [stay]
 * chroots into the directory whose path bytes are HEXDIR in hex (so a
 * path that is not UTF-8 passes through argv intact), then chdir("/")
 * unless `stay` is given (its cwd then stays outside its root), prints
 * "ready\n" and sleeps until killed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: chroot_hold HEXDIR [stay]\n");
        return 2;
    }
    size_t n = strlen(argv[1]) / 2;
    char *dir = calloc(n + 1, 1);
    for (size_t i = 0; i < n; i++) sscanf(argv[1] + 2 * i, "%2hhx", &dir[i]);
    if (chroot(dir) != 0) {
        perror("chroot");
        return 1;
    }
    if (!(argc > 2 && strcmp(argv[2], "stay") == 0) && chdir("/") != 0) {
        perror("chdir");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
