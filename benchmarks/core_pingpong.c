/* Two threads pinned to CPUs 0 and 1 (bench_core_placement.py builds and runs this when a C compiler
 * is found). Prints, on one line:
 *   roundtrip_ns       a cache line passed from CPU 0 to CPU 1 and back (mean of 19000 round trips);
 *   read256k_other_us  CPU 1 reading 256 KiB that CPU 0 has just written (one load per cache line);
 *   read256k_own_us    the same read of 256 KiB that CPU 1 has just written itself (best of 5 each).
 * Build: cc -O2 -pthread core_pingpong.c -o core_pingpong */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#define ROUNDS 20000
#define WARM 1000
#define FLOATS (256 * 1024 / 4)

static _Atomic int flag __attribute__((aligned(64)));
static _Atomic int stage __attribute__((aligned(64)));
static float buf[FLOATS] __attribute__((aligned(64)));
static volatile float sink;
static double read_s[2];

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static int pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *pong(void *arg) {
  (void)arg;
  pin(1);
  for (int i = 0; i < ROUNDS; i++) {
    while (atomic_load(&flag) != 1) {
    }
    atomic_store(&flag, 0);
  }
  return NULL;
}

static double read_all(void) {
  double t = now();
  float s = 0;
  for (int i = 0; i < FLOATS; i += 16) s += buf[i];
  sink = s;
  return now() - t;
}

static void *reader(void *arg) {
  (void)arg;
  pin(1);
  while (atomic_load(&stage) != 1) {
  }
  read_s[0] = read_all(); /* what CPU 0 wrote */
  for (int i = 0; i < FLOATS; i++) buf[i] = (float)i;
  read_s[1] = read_all(); /* what this CPU wrote */
  atomic_store(&stage, 2);
  return NULL;
}

int main(void) {
  pthread_t th;
  if (pin(0) != 0) {
    fprintf(stderr, "core_pingpong: cannot pin a thread to CPU 0 (needs CPUs 0 and 1)\n");
    return 1;
  }
  pthread_create(&th, NULL, pong, NULL);
  double t = 0;
  for (int i = 0; i < ROUNDS; i++) {
    if (i == WARM) t = now();
    atomic_store(&flag, 1);
    while (atomic_load(&flag) != 0) {
    }
  }
  double roundtrip_ns = (now() - t) / (ROUNDS - WARM) * 1e9;
  pthread_join(th, NULL);
  double best[2] = {1e9, 1e9};
  for (int rep = 0; rep < 5; rep++) {
    atomic_store(&stage, 0);
    pthread_create(&th, NULL, reader, NULL);
    for (int i = 0; i < FLOATS; i++) buf[i] = (float)i;
    atomic_store(&stage, 1);
    pthread_join(th, NULL);
    for (int k = 0; k < 2; k++)
      if (read_s[k] < best[k]) best[k] = read_s[k];
  }
  printf("roundtrip_ns %.0f read256k_other_us %.1f read256k_own_us %.1f\n", roundtrip_ns, best[0] * 1e6,
         best[1] * 1e6);
  return 0;
}
