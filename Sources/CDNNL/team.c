// Veil's thread team: the part of the OpenMP runtime that oneDNN 2.6 (Debian's build, OpenMP
// threading) calls, implemented here so that Veil decides how its threads wait.
//
// libdnnl.so imports six OpenMP symbols: GOMP_parallel, GOMP_barrier, omp_get_max_threads,
// omp_get_num_threads, omp_get_thread_num and omp_in_parallel. A program that defines them
// takes them over: the link puts a definition that a shared library on the link line
// references into the program's dynamic symbol table, and the dynamic linker binds libdnnl's
// references to the program's definitions before libgomp's (an unversioned definition
// satisfies libdnnl's versioned reference). libgomp stays loaded and unused.
//
// Why: libgomp fixes its waiting at start-up (OMP_WAIT_POLICY, GOMP_SPINCOUNT), for the whole
// process. Sleeping between parallel regions costs a futex wake-up (30-80 us in a VM) at every
// region, which doubles a small network's time; spinning burns cores between requests and
// fights other processes on a shared machine. This team spins only while the caller holds it
// (`veil_team_hold`: an executor's pass, a training loop), and then only as long as spinning
// pays: the spin doubles when the awaited thread arrives within it and halves when it does not
// (a machine with more runnable threads than cores), between 2 and 200 us; outside a pass its
// threads sleep at once. Measured against libgomp in docs/benchmarks.md, "Veil's own thread
// team". A pass that starts after idleness runs with its threads pinned, one to a CPU (see
// pin_for_pass).
//
// Semantics kept from OpenMP as oneDNN uses it: the calling thread is thread 0 of the team; a
// parallel region started inside another (or while the team serves another caller) runs on
// the calling thread alone; the thread count (omp_set_num_threads) is a per-thread setting
// whose default is OMP_NUM_THREADS or the cores this process may run on; GOMP_barrier waits
// for the whole team.
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "include/cdnnl.h"

#define TEAM_MAX 256

static void futex_wait(atomic_uint *address, unsigned expected) {
  syscall(SYS_futex, (unsigned *)address, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(atomic_uint *address) {
  syscall(SYS_futex, (unsigned *)address, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

// --- Settings ---------------------------------------------------------------------------

static pthread_once_t settings_once = PTHREAD_ONCE_INIT;
static int default_threads = 1;
// Nanoseconds a waiting thread spins while the team is held, and while it is not.
static atomic_long spin_held_ns = 200000;
static atomic_long spin_free_ns = 0;
// The spin while held, adapted to the machine (see wait_change).
static atomic_long adaptive_ns = 200000;
#define ADAPTIVE_FLOOR_NS 2000
// Counters for tests and benchmarks.
static atomic_ulong regions_run, sleeps;
unsigned long veil_team_regions(void) { return atomic_load(&regions_run); }
unsigned long veil_team_sleeps(void) { return atomic_load(&sleeps); }
// Tests only: how long the last worker out of a region waits between its decrement of
// `running` and its bump of `done` (a worker preempted there), in nanoseconds.
static atomic_long late_ns = 0;
void veil_team_set_late_worker(long ns) { atomic_store(&late_ns, ns < 0 ? 0 : ns); }
// Passes in progress (veil_team_hold).
static atomic_int holds = 0;

static long env_long(const char *name, long fallback) {
  const char *v = getenv(name);
  if (!v || !*v) return fallback;
  char *end = NULL;
  long n = strtol(v, &end, 10);
  return (end && *end == 0 && n >= 0) ? n : fallback;
}

// The CPUs this process may run on, as it started.
static cpu_set_t process_cpus;
static int process_cpu_count;

static void read_settings(void) {
  cpu_set_t set;
  int cores = 0;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    cores = CPU_COUNT(&set);
    process_cpus = set;
    process_cpu_count = cores;
  }
  if (cores < 1) cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (cores < 1) cores = 1;
  long n = env_long("OMP_NUM_THREADS", cores);
  default_threads = (int)(n < 1 ? 1 : (n > TEAM_MAX ? TEAM_MAX : n));
}

static int process_default_threads(void) {
  pthread_once(&settings_once, read_settings);
  return default_threads;
}

void veil_team_set_spin(long held_ns, long free_ns) {
  atomic_store(&spin_held_ns, held_ns < 0 ? 0 : held_ns);
  atomic_store(&adaptive_ns, held_ns < 0 ? 0 : held_ns);
  atomic_store(&spin_free_ns, free_ns < 0 ? 0 : free_ns);
}

// --- Per-thread state -------------------------------------------------------------------

static __thread int thread_count_setting = 0;  // 0: the process default
static __thread int team_thread_num = 0;
static __thread int team_size = 1;
static __thread int in_active_region = 0;

int omp_get_max_threads(void) {
  return thread_count_setting > 0 ? thread_count_setting : process_default_threads();
}

void omp_set_num_threads(int n) { thread_count_setting = n < 1 ? 1 : (n > TEAM_MAX ? TEAM_MAX : n); }
int omp_get_thread_num(void) { return team_thread_num; }
int omp_get_num_threads(void) { return team_size; }
int omp_in_parallel(void) { return in_active_region; }

// --- Waiting ----------------------------------------------------------------------------

// The spin a wait may take now: the adapted one while held (when the policy adapts), the
// configured one otherwise. Read again while spinning, so that a pass's end or a change of
// policy reaches threads already spinning.
static long spin_budget(int *adapt) {
  int held = atomic_load(&holds) > 0;
  long ceiling = held ? atomic_load(&spin_held_ns) : atomic_load(&spin_free_ns);
  int adapts = held && atomic_load(&spin_free_ns) == 0 && ceiling > 0;
  if (adapt) *adapt = adapts;
  long budget = adapts ? atomic_load(&adaptive_ns) : ceiling;
  return budget > ceiling ? ceiling : budget;
}

// Waits until *address differs from `seen`: spins, yielding the core now and then, then
// sleeps on the futex. `sleepers` counts the threads that may be asleep, so that a waker makes
// the system call only when one is.
//
// While held, the spin adapts to the machine (`adaptive_ns`, at most `spin_held_ns`): a wait
// that ends while spinning doubles it, one that outlasts it halves it. On a quiet machine the
// awaited thread arrives within microseconds and the spin stays long; when the machine has
// more runnable threads than cores, the awaited thread is often descheduled, spinning only
// keeps the load balancer from giving it the spinner's core, and the spin shrinks towards
// sleeping at once.
static void wait_change(atomic_uint *address, unsigned seen, atomic_int *sleepers) {
  int adapt;
  long budget = spin_budget(&adapt);
  if (budget > 0) {
    uint64_t start = now_ns();
    for (unsigned i = 1;; i++) {
      if (atomic_load_explicit(address, memory_order_acquire) != seen) {
        if (adapt) {
          long ceiling = atomic_load(&spin_held_ns);
          long grown = budget * 2 < ceiling ? budget * 2 : ceiling;
          if (grown > atomic_load(&adaptive_ns)) atomic_store(&adaptive_ns, grown);
        }
        return;
      }
      cpu_relax();
      if ((i & 63) == 0) {
        long now_budget = spin_budget(NULL);
        if ((long)(now_ns() - start) >= (now_budget < budget ? now_budget : budget)) break;
        if ((i & 4095) == 0) sched_yield();
      }
    }
    if (adapt) {
      long shrunk = budget / 2 > ADAPTIVE_FLOOR_NS ? budget / 2 : ADAPTIVE_FLOOR_NS;
      atomic_store(&adaptive_ns, shrunk);
    }
  }
  if (atomic_load(address) != seen) return;
  atomic_fetch_add(&sleeps, 1);
  atomic_fetch_add(sleepers, 1);
  while (atomic_load(address) == seen) futex_wait(address, seen);
  atomic_fetch_sub(sleepers, 1);
}

static void bump_and_wake(atomic_uint *address, atomic_int *sleepers) {
  atomic_fetch_add(address, 1);
  if (atomic_load(sleepers) > 0) futex_wake(address);
}

// --- The team ---------------------------------------------------------------------------

// A worker's mailbox: written by the caller only while the worker is idle (the caller waited
// for the worker's previous region to end), then announced by bumping `go`.
typedef struct {
  atomic_uint go;
  atomic_int sleeping;
  void (*fn)(void *);
  void *data;
  int size;
  // For placement (pin_for_pass): the worker's thread id, when it left its last region, and
  // the CPU it ran its last region on.
  atomic_int tid;
  _Atomic uint64_t idle_since;
  atomic_int cpu;
  char pad[64];
} Worker;

static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;  // one region at a time
static int started;                                       // workers 1...started exist
static Worker workers[TEAM_MAX];
static atomic_int running;  // workers still in the current region
static atomic_uint done;    // bumped when the last of them leaves
static atomic_int done_sleepers;
static atomic_int barrier_count;
static atomic_uint barrier_generation;
static atomic_int barrier_sleepers;

// --- Placement for a pass -----------------------------------------------------------------

// After a few milliseconds of idleness, this 2-vCPU virtual machine's scheduler puts the two
// threads of a pass on one CPU while the other idles (`perf sched timehist`: caller and worker
// take turns on CPU 1 for the whole pass, CPU 0 idle): the futex wake-up of the worker for the
// first region, or of the caller by its worker, places the woken thread on the waker's CPU.
// The likely cause: a vCPU idle that long is halted, and the guest kernel reads a halted vCPU
// as preempted, not idle. The load balancer, itself waiting for a tick, rarely parts them
// within a pass of a few milliseconds: with 50 ms between passes, as a server with sporadic
// requests sees, EfficientNet-Lite0 took 9.7-10 ms instead of 4.6-4.8 (docs/benchmarks.md, "A
// pass after idleness: the team on one core"). So a pass (veil_team_hold(2)) that starts after
// such idleness, on a machine with a free CPU, runs pinned: the caller on the CPU it is on,
// each worker on another one of its own; when the pass ends, every thread gets back the CPUs
// it had. Not when the machine is busy (see idle_cpu_likely): a worker pinned to a CPU that
// runs another process's pass slows that pass more than sharing the caller's core slows this
// one (a first version, which did not look, cost 8 clients of the private path 10 % of their
// throughput).
//
// Mode (veil_team_set_placement; VEIL_TEAM_PLACE=0 in the environment turns it off for
// benchmarks of the team itself): 0 never, 1 when it pays (the default), 2 for every pass
// (tests).
static atomic_int placement = -1;  // -1: not read yet
#define PLACEMENT_IDLE_NS 2000000
static atomic_ulong placements;
static atomic_int last_caller_cpu = -1;
static atomic_int started_workers;  // `started`, readable outside `busy`
// The pass this thread pinned (its holds, and the CPUs it had before).
static __thread int thread_holds = 0;
static __thread int pinned_here = 0;
static __thread cpu_set_t cpus_before;

void veil_team_set_placement(int mode) { atomic_store(&placement, mode < 0 ? 0 : (mode > 2 ? 2 : mode)); }
unsigned long veil_team_placements(void) { return atomic_load(&placements); }
void veil_team_last_placement(int *caller_cpu, int *worker_cpu) {
  *caller_cpu = atomic_load(&last_caller_cpu);
  *worker_cpu = atomic_load_explicit(&workers[1].cpu, memory_order_acquire);
}

static int placement_mode(void) {
  int mode = atomic_load(&placement);
  if (mode < 0) {
    const char *v = getenv("VEIL_TEAM_PLACE");
    int fresh = (v && v[0] == '0' && v[1] == 0) ? 0 : 1;
    int unread = -1;
    atomic_compare_exchange_strong(&placement, &unread, fresh);
    mode = atomic_load(&placement);
  }
  return mode;
}

// Whether a CPU beside the caller's is likely free: the threads runnable now in the whole
// machine (/proc/loadavg's fourth field, "runnable/all", read in one pread), the caller among
// them, are at most the CPUs this process may use. That leaves room for one thread beside the
// caller on two cores, usually this process's own I/O thread handing the request over; two
// or more mean another pass or another program runs there. A failed read says yes.
static int idle_cpu_likely(void) {
  static atomic_int fd = -2;
  int f = atomic_load(&fd);
  if (f == -2) {
    int opened = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    int unset = -2;
    if (!atomic_compare_exchange_strong(&fd, &unset, opened) && opened >= 0) close(opened);
    f = atomic_load(&fd);
  }
  if (f < 0) return 1;
  char text[128];
  ssize_t n = pread(f, text, sizeof text - 1, 0);
  if (n <= 0) return 1;
  text[n] = 0;
  // "0.55 1.04 1.38 2/345 12345": the fourth field's numerator.
  char *p = text;
  for (int field = 0; field < 3 && p; field++) {
    p = strchr(p, ' ');
    if (p) p++;
  }
  if (!p) return 1;
  return strtol(p, NULL, 10) <= process_cpu_count;
}

// At the start of a pass (the first hold): pins the caller to its CPU and each worker of its
// team (the calling thread's count) to one of the others, when the mode says so.
static void pin_for_pass(void) {
  int mode = placement_mode();
  if (mode == 0) return;
  pthread_once(&settings_once, read_settings);
  int count = atomic_load(&started_workers);
  int team = omp_get_max_threads();
  if (team - 1 < count) count = team - 1;
  if (process_cpu_count < 2 || count < 1) return;
  if (mode == 1) {
    uint64_t now = now_ns();
    for (int i = 1; i <= count; i++) {
      if (now - atomic_load(&workers[i].idle_since) < PLACEMENT_IDLE_NS) return;
    }
    if (!idle_cpu_likely()) return;
  }
  int cpu = sched_getcpu();
  if (cpu < 0 || !CPU_ISSET(cpu, &process_cpus)) return;
  if (sched_getaffinity(0, sizeof cpus_before, &cpus_before) != 0) return;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (sched_setaffinity(0, sizeof one, &one) != 0) return;
  pinned_here = 1;
  // The other CPUs in order; worker i takes the i-th (round the list when there are more).
  int others[CPU_SETSIZE];
  int n = 0;
  for (int c = 0; c < CPU_SETSIZE; c++) {
    if (c != cpu && CPU_ISSET(c, &process_cpus)) others[n++] = c;
  }
  for (int i = 1; i <= count; i++) {
    int tid = atomic_load(&workers[i].tid);
    if (tid <= 0) continue;
    CPU_ZERO(&one);
    CPU_SET(others[(i - 1) % n], &one);
    sched_setaffinity(tid, sizeof one, &one);
  }
  atomic_store(&last_caller_cpu, cpu);
  atomic_fetch_add(&placements, 1);
}

// At the end of the pass that pinned: every thread gets its CPUs back.
static void unpin_after_pass(void) {
  int count = atomic_load(&started_workers);
  for (int i = 1; i <= count; i++) {
    int tid = atomic_load(&workers[i].tid);
    if (tid > 0) sched_setaffinity(tid, sizeof process_cpus, &process_cpus);
  }
  sched_setaffinity(0, sizeof cpus_before, &cpus_before);
  pinned_here = 0;
}

void veil_team_hold(int on) {
  if (on) {
    int first = atomic_fetch_add(&holds, 1) == 0;
    if (thread_holds++ == 0 && first && on == 2) pin_for_pass();
  } else {
    if (--thread_holds == 0 && pinned_here) unpin_after_pass();
    atomic_fetch_sub(&holds, 1);
  }
}

static void *worker_main(void *arg) {
  int me = (int)(intptr_t)arg;
  Worker *w = &workers[me];
  atomic_store(&w->tid, (int)syscall(SYS_gettid));
  atomic_store(&w->cpu, -1);
  unsigned seen = 0;
  for (;;) {
    atomic_store(&w->idle_since, now_ns());
    wait_change(&w->go, seen, &w->sleeping);
    atomic_store_explicit(&w->cpu, sched_getcpu(), memory_order_release);
    seen = atomic_load(&w->go);
    team_thread_num = me;
    team_size = w->size;
    in_active_region = 1;
    w->fn(w->data);
    team_thread_num = 0;
    team_size = 1;
    in_active_region = 0;
    if (atomic_fetch_sub(&running, 1) == 1) {
      long late = atomic_load(&late_ns);
      if (late > 0) {
        uint64_t until = now_ns() + (uint64_t)late;
        while (now_ns() < until) cpu_relax();
      }
      bump_and_wake(&done, &done_sleepers);
    }
  }
  return NULL;
}

// Starts workers up to `count` (under `busy`); returns how many there are.
static int start_workers(int count) {
  while (started < count) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    // The process's CPUs, not its creator's: a worker started during a pinned pass would
    // otherwise inherit the caller's single CPU.
    pthread_once(&settings_once, read_settings);
    if (process_cpu_count > 0) pthread_attr_setaffinity_np(&attr, sizeof process_cpus, &process_cpus);
    int ok = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)(started + 1)) == 0;
    pthread_attr_destroy(&attr);
    if (!ok) break;
    started++;
    atomic_store(&started_workers, started);
  }
  return started;
}

static void run_alone(void (*fn)(void *), void *data) {
  int num = team_thread_num, size = team_size;
  team_thread_num = 0;
  team_size = 1;
  fn(data);
  team_thread_num = num;
  team_size = size;
}

void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags) {
  (void)flags;
  int n = num_threads > 0 ? (int)num_threads : omp_get_max_threads();
  if (n > TEAM_MAX) n = TEAM_MAX;
  if (n <= 1 || in_active_region || pthread_mutex_trylock(&busy) != 0) {
    run_alone(fn, data);
    return;
  }
  int available = start_workers(n - 1) + 1;
  if (available < n) n = available;
  if (n <= 1) {
    pthread_mutex_unlock(&busy);
    run_alone(fn, data);
    return;
  }
  atomic_fetch_add(&regions_run, 1);
  atomic_store(&running, n - 1);
  atomic_store(&barrier_count, 0);
  for (int i = 1; i < n; i++) {
    workers[i].fn = fn;
    workers[i].data = data;
    workers[i].size = n;
    bump_and_wake(&workers[i].go, &workers[i].sleeping);
  }
  team_thread_num = 0;
  team_size = n;
  in_active_region = 1;
  fn(data);
  in_active_region = 0;
  team_size = 1;
  // The region is over when `running` is 0; `done` only says when to look again. The last
  // worker out of the previous region may bump `done` after its caller saw `running` reach 0
  // and moved on, so a bump does not mean this region's workers have left: waiting for a
  // change of `done` seen at the start returned early, and the caller then freed the data a
  // worker was still running on.
  while (atomic_load(&running) > 0) {
    unsigned seen = atomic_load(&done);
    if (atomic_load(&running) == 0) break;
    wait_change(&done, seen, &done_sleepers);
  }
  pthread_mutex_unlock(&busy);
}

void GOMP_barrier(void) {
  if (team_size <= 1) return;
  unsigned generation = atomic_load(&barrier_generation);
  if (atomic_fetch_add(&barrier_count, 1) == team_size - 1) {
    atomic_store(&barrier_count, 0);
    bump_and_wake(&barrier_generation, &barrier_sleepers);
  } else {
    wait_change(&barrier_generation, generation, &barrier_sleepers);
  }
}
