// What it costs to touch memory for the first time: maps GIGABYTES of anonymous memory
// and writes one byte per 4 KiB page, printing the cost per page for every 256 MiB.
// On a VM whose host backs guest memory lazily (or takes freed memory back), pages the
// guest has not used recently cost a host page fault on top of the guest's own: 1.5 us
// per page for the first ~3.7 GB, then 12.7 us (perf/RESULTS.md, "The broker's share of
// the latency", 2026-11-21). The page cache grows by every byte a page-cache-mode broker
// writes, so this bounds page-cache produce.
//
//   cc -O2 -o fresh-memory perf/fresh-memory.c && taskset -c 0 ./fresh-memory 12
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 2 || atoi(argv[1]) <= 0) {
        fprintf(stderr, "usage: %s GIGABYTES\n", argv[0]);
        return 2;
    }
    size_t total = (size_t)atoi(argv[1]) << 30, chunk = (size_t)256 << 20, page = 4096;
    char *memory = mmap(NULL, total, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t at = 0; at < total; at += chunk) {
        double start = now_s();
        for (size_t i = at; i < at + chunk; i += page) memory[i] = 1;
        double us_per_page = (now_s() - start) * 1e6 / (double)(chunk / page);
        printf("%6.2f GB: %5.1f us/page\n", (double)(at + chunk) / (1 << 30), us_per_page);
    }
    return 0;
}
