/*
 * openmpi-bench: the `openmpi` transport of `myrixen bench pingpong|stream` (src/bench/openmpi.ts
 * compiles it with mpicc and starts it with `mpirun -np 2`). It measures Open MPI between two
 * ranks with the method MyriXen's mx-bench uses, so the rows compare like with like:
 *   pingpong  one-way latency in µs: round trip / 2 (osu_latency), receive pre-posted
 *   stream    MB/s (10^6 bytes): windows of WINDOW non-blocking sends, then a 1-byte ack
 *             (osu_bw), timed at the sender
 * Rank 0 reads one command per line on stdin (mpirun forwards its stdin to rank 0):
 *   pingpong BYTES ITERS WARMUP | stream BYTES ITERS WARMUP WINDOW | stop
 * and answers each with one line on stdout: `row VALUE`, or `error TEXT`. At start it prints
 * `ready`. Between commands rank 1 waits with MPI_Test and growing naps, not a busy poll, so
 * an idle pair leaves the cores to the transports measured in between; during a batch both
 * ranks busy-poll (Open MPI's blocking calls spin).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { CMD_STOP = 0, CMD_PINGPONG = 1, CMD_STREAM = 2 };
enum { TAG_CMD = 100, TAG_DATA = 1, TAG_ACK = 2 };
#define MAX_BYTES (64L << 20)
#define MAX_WINDOW 1024

static char *sbuf, *rbuf;
static long cap;

static int ensure(long n) {
  if (n < 1) n = 1;
  if (n <= cap) return 1;
  free(sbuf);
  free(rbuf);
  sbuf = malloc(n);
  rbuf = malloc(n);
  if (!sbuf || !rbuf) {
    free(sbuf);
    free(rbuf);
    sbuf = rbuf = NULL;
    cap = 0;
    return 0;
  }
  memset(sbuf, 0x5a, n);
  memset(rbuf, 0, n);
  cap = n;
  return 1;
}

/* One batch; rank 0 returns the sample (rank 1 returns 0). */
static double run(int rank, const long *cmd) {
  long bytes = cmd[1], iters = cmd[2], warmup = cmd[3], window = cmd[4];
  int n = (int)bytes, peer = 1 - rank;
  MPI_Request reqs[MAX_WINDOW];
  char ack = 0;
  double t0 = 0;
  MPI_Barrier(MPI_COMM_WORLD); /* both ranks awake before anything is timed */
  if (cmd[0] == CMD_PINGPONG) {
    for (long i = 0; i < warmup + iters; i++) {
      if (i == warmup) t0 = MPI_Wtime();
      if (rank == 0) {
        MPI_Irecv(rbuf, n, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD, &reqs[0]);
        MPI_Send(sbuf, n, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD);
        MPI_Wait(&reqs[0], MPI_STATUS_IGNORE);
      } else {
        MPI_Recv(rbuf, n, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(sbuf, n, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD);
      }
    }
    return rank == 0 ? (MPI_Wtime() - t0) * 1e6 / (2.0 * iters) : 0;
  }
  for (long i = 0; i < warmup + iters; i++) {
    if (i == warmup) t0 = MPI_Wtime();
    if (rank == 0) {
      for (long k = 0; k < window; k++)
        MPI_Isend(sbuf, n, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD, &reqs[k]);
      MPI_Waitall((int)window, reqs, MPI_STATUSES_IGNORE);
      MPI_Recv(&ack, 1, MPI_BYTE, peer, TAG_ACK, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else {
      for (long k = 0; k < window; k++)
        MPI_Irecv(rbuf, n, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD, &reqs[k]);
      MPI_Waitall((int)window, reqs, MPI_STATUSES_IGNORE);
      MPI_Send(&ack, 1, MPI_BYTE, peer, TAG_ACK, MPI_COMM_WORLD);
    }
  }
  double sec = MPI_Wtime() - t0;
  return rank == 0 ? (double)bytes * window * iters / 1e6 / sec : 0;
}

/* Rank 0: the next valid command from stdin (errors are answered and skipped). */
static void next_command(long *cmd) {
  char line[256], kind[32];
  for (;;) {
    if (!fgets(line, sizeof line, stdin)) {
      cmd[0] = CMD_STOP;
      return;
    }
    long b = 0, it = 0, w = 0, win = 1;
    int got = sscanf(line, "%31s %ld %ld %ld %ld", kind, &b, &it, &w, &win);
    if (got >= 1 && strcmp(kind, "stop") == 0) {
      cmd[0] = CMD_STOP;
      return;
    }
    int pp = got == 4 && strcmp(kind, "pingpong") == 0;
    int st = got == 5 && strcmp(kind, "stream") == 0;
    if (!pp && !st) {
      printf("error unknown command: %s", line);
    } else if (b < 0 || b > MAX_BYTES || it < 1 || w < 0 || win < 1 || win > MAX_WINDOW) {
      printf("error out of range: %s", line);
    } else if (!ensure(b)) {
      printf("error cannot allocate %ld bytes\n", b);
    } else {
      cmd[0] = pp ? CMD_PINGPONG : CMD_STREAM;
      cmd[1] = b;
      cmd[2] = it;
      cmd[3] = w;
      cmd[4] = win;
      return;
    }
    fflush(stdout);
  }
}

/*
 * Rank 1: wait for rank 0's command without spinning a core: naps that grow from 20 µs to
 * 5 ms, so an idle pair wakes about 200 times a second (the barrier that starts each batch
 * absorbs the last nap, outside the timed part).
 */
static void await_command(long *cmd) {
  MPI_Request req;
  int done = 0;
  long nap_ns = 20 * 1000;
  MPI_Irecv(cmd, 5, MPI_LONG, 0, TAG_CMD, MPI_COMM_WORLD, &req);
  for (;;) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (done) return;
    struct timespec nap = {0, nap_ns};
    nanosleep(&nap, NULL);
    if (nap_ns < 5 * 1000 * 1000) nap_ns *= 2;
  }
}

int main(int argc, char **argv) {
  int rank, size;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != 2) {
    if (rank == 0) printf("error needs exactly 2 ranks, got %d\n", size);
    MPI_Finalize();
    return 2;
  }
  if (rank == 0) {
    printf("ready\n");
    fflush(stdout);
  }
  for (;;) {
    long cmd[5] = {0, 0, 0, 0, 0};
    if (rank == 0) {
      next_command(cmd);
      MPI_Send(cmd, 5, MPI_LONG, 1, TAG_CMD, MPI_COMM_WORLD);
    } else {
      await_command(cmd);
      if (cmd[0] != CMD_STOP && !ensure(cmd[1])) MPI_Abort(MPI_COMM_WORLD, 3);
    }
    if (cmd[0] == CMD_STOP) break;
    double v = run(rank, cmd);
    if (rank == 0) {
      printf("row %.6f\n", v);
      fflush(stdout);
    }
  }
  free(sbuf);
  free(rbuf);
  MPI_Finalize();
  return 0;
}
