// How long this machine stops running a ready thread: sleeps 200 us in a loop, at
// SCHED_FIFO priority when allowed (then nothing else on the CPU delays it), and measures
// how late each wake-up is. Prints "<max late ms> <wake-ups more than 1 ms late>".
// Run one per CPU on an idle machine (perf/baseline.sh does): what it sees is what the
// hypervisor and the kernel take from any process, the floor under every tail latency.
//
//   cc -O2 -o stall-probe perf/stall-probe.c && ./stall-probe SECONDS
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv) {
  const uint64_t seconds = argc > 1 ? strtoull(argv[1], NULL, 10) : 10;
  const uint64_t nap_ns = 200000;
  struct sched_param param = {.sched_priority = 50};
  (void)sched_setscheduler(0, SCHED_FIFO, &param); // best effort
  const uint64_t end = now_ns() + seconds * 1000000000ull;
  uint64_t worst = 0, late = 0;
  for (;;) {
    const uint64_t before = now_ns();
    if (before > end) break;
    struct timespec nap = {0, (long)nap_ns};
    nanosleep(&nap, NULL);
    const uint64_t over = now_ns() - before - nap_ns;
    if (over > worst) worst = over;
    if (over > 1000000) late++;
  }
  printf("%.3f %llu\n", (double)worst / 1e6, (unsigned long long)late);
  return 0;
}
