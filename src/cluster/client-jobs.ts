/**
 * The jobs one control client (a launcher) runs on this host: placing a job's ranks here
 * (a RankSet, the same code as the embedded host), passing their output, MPI addresses and
 * exits back over the client's connection, handing them the job's peer list, answering
 * where they wait, and stopping them — on request, or all at once when the launcher is gone.
 * Everything in a request was validated by wire.ts; what a rank sends back is cut to fit a line.
 * A start is admitted against the host's capacity (capacity.ts: ranks at once, guest RAM),
 * shared by every client, before any of its ranks starts.
 */

import type { Host } from "../host/host.js";
import type { HostCapacity } from "./capacity.js";
import type { Logger } from "./log.js";
import { DEFAULT_RANK_PAGES, RankRefusal, RankSet } from "./ranks.js";
import { type HostMessage, MAX_OUTPUT_FILE_BYTES, MAX_OUTPUT_LINE, type StartMessage } from "./wire.js";

/** What the jobs need of the connection they came on. */
export interface JobClient {
  /** Who the client is, for log lines. */
  readonly who: string;
  readonly isClosed: boolean;
  /** Sends a message; `droppable` ones are dropped (false) when the client reads too slowly. */
  send(m: HostMessage, droppable?: boolean): boolean;
}

export class ClientJobs {
  private readonly sets = new Map<string, RankSet>();
  private droppedLines = 0;

  constructor(
    private readonly host: Host,
    private readonly client: JobClient,
    private readonly log: Logger,
    /** The host's capacity, shared by every client's jobs. */
    private readonly capacity: HostCapacity,
  ) {}

  get(job: string): RankSet | undefined {
    return this.sets.get(job);
  }

  /** Every job's rank set, running or ended but not yet forgotten. */
  all(): RankSet[] {
    return [...this.sets.values()];
  }

  /** The status of each job's ranks here, for a status answer. */
  status(): { job: string; ranks: ReturnType<RankSet["status"]> }[] {
    return [...this.sets].map(([job, set]) => ({ job, ranks: set.status() }));
  }

  /** The launcher went away: its jobs' ranks here go too. */
  launcherGone(): void {
    for (const [job, set] of this.sets) {
      // Also a set still starting: its ranks would come up after this and wait for ever for
      // a peer list no one sends (and hold their memory, endpoints and threads).
      if (!set.active) continue;
      this.log.info("the job's launcher is gone: stopping its ranks here", { job, ranks: set.spec.ranks });
      void set.stop();
    }
  }

  /** Starts the ranks a start request names and replies whether they run. */
  async start(m: StartMessage): Promise<void> {
    const job = m.job;
    const reply = (ok: boolean, error?: string, code?: "refused" | "failed") =>
      this.client.send({ type: "reply", id: m.id, ok, error, code });
    if (this.sets.has(job)) {
      reply(false, `job ${job} already has ranks on this host`, "refused");
      return;
    }
    const bad = m.ranks.find((r) => r >= m.size);
    if (bad !== undefined || new Set(m.ranks).size !== m.ranks.length) {
      reply(false, `ranks ${JSON.stringify(m.ranks)} do not fit a job of size ${m.size}`, "refused");
      return;
    }
    // Before anything starts, and synchronously: the host's room is shared by every client.
    const held = this.capacity.reserve(m.ranks, m.pages ?? DEFAULT_RANK_PAGES);
    if (typeof held === "string") {
      this.log.warn("refused a job: the host is at capacity", {
        job,
        client: this.client.who,
        ranks: m.ranks.length,
        pages: m.pages ?? DEFAULT_RANK_PAGES,
        running: this.capacity.used.ranks,
        guestMb: this.capacity.used.guestMb,
      });
      reply(false, held, "refused");
      return;
    }
    const set = new RankSet(
      this.host,
      {
        job,
        size: m.size,
        path: m.path,
        program: m.program,
        argv: m.argv,
        ranks: m.ranks,
        key: m.key,
        pages: m.pages,
        qos: m.qos,
        maxHeapMb: m.maxHeapMb,
        maxBufferMb: m.maxBufferMb,
        env: m.env,
      },
      {
        output: (rank, stream, line) => {
          const l = line.length > MAX_OUTPUT_LINE ? `${line.slice(0, MAX_OUTPUT_LINE)}…[cut]` : line;
          if (
            !this.client.send({ type: "output", job, rank, stream, line: l }, true) &&
            !this.client.isClosed
          ) {
            if (this.droppedLines++ === 0)
              this.log.warn("the launcher reads too slowly: dropping rank output", {
                client: this.client.who,
                job,
              });
          }
        },
        addr: (rank, nic, endpoint) => this.client.send({ type: "addr", job, rank, nic, endpoint }),
        // The launcher writes it, where the user launched the job: this host writes no file a
        // job names (its argv could name any path on this host's disk).
        file: (rank, file, text) => {
          const big = Buffer.byteLength(text) > MAX_OUTPUT_FILE_BYTES;
          this.client.send({
            type: "output-file",
            job,
            rank,
            file: file.slice(0, 4096),
            text: big ? "" : text,
            ...(big
              ? {
                  error: `its result file ${file} is over ${MAX_OUTPUT_FILE_BYTES} bytes, more than a host sends`,
                }
              : {}),
          });
        },
        exit: (e) => {
          held.releaseRank(e.rank);
          this.log.info("rank ended", {
            job,
            rank: e.rank,
            state: e.state,
            exitCode: e.exitCode,
            error: e.error?.message,
          });
          const wired = wireResult(e.result);
          // Before the exit: the launcher may be gone once it has every rank's.
          if (wired.dropped) {
            this.log.warn("a rank's return value not sent", { job, rank: e.rank, reason: wired.dropped });
            this.client.send({
              type: "log",
              level: "warn",
              msg: `job ${job} rank ${e.rank}: ${wired.dropped}; its launcher gets no result`,
            });
          }
          this.client.send({
            type: "exit",
            job,
            rank: e.rank,
            state: e.state,
            exitCode: e.exitCode,
            error: e.error
              ? {
                  name: String(e.error.name).slice(0, 256),
                  message: String(e.error.message).slice(0, 65536),
                  stack: typeof e.error.stack === "string" ? e.error.stack.slice(0, 65536) : undefined,
                }
              : undefined,
            result: wired.result,
          });
        },
      },
    );
    this.sets.set(job, set);
    this.log.info("starting ranks", {
      job,
      client: this.client.who,
      ranks: m.ranks,
      size: m.size,
      path: m.path,
      program: m.program,
    });
    try {
      await set.start();
      reply(true);
      void set.done
        .then(() => this.log.info("the job's ranks here have ended", { job }))
        .catch((e: unknown) => this.log.warn("a job's ranks ended with an error", { job, error: String(e) }))
        .finally(() => {
          held.releaseAll();
          if (this.sets.get(job) === set) this.sets.delete(job);
        });
    } catch (e) {
      const refused = e instanceof RankRefusal;
      this.log.warn(refused ? "refused a job" : "could not start a job's ranks", {
        job,
        error: (e as Error).message,
      });
      reply(false, (e as Error).message, refused ? "refused" : "failed");
      void set.done
        .catch(() => undefined)
        .finally(() => {
          held.releaseAll();
          if (this.sets.get(job) === set) this.sets.delete(job);
        });
    }
  }

  /** The job's peer list (every rank's MX address), for its ranks here. */
  peers(job: string, peers: Parameters<RankSet["peers"]>[0]): void {
    const set = this.sets.get(job);
    if (!set)
      this.log.warn("peers for a job this client has not started here", { client: this.client.who, job });
    else if (peers.length !== set.spec.size)
      this.log.warn("peers list of the wrong length ignored", {
        job,
        got: peers.length,
        size: set.spec.size,
      });
    else set.peers(peers);
  }

  /** Where each of the job's ranks here is (which MPI call it waits in), for `--timeout`. */
  states(job: string): ReturnType<RankSet["states"]> {
    return this.sets.get(job)?.states() ?? [];
  }

  stop(job: string): void {
    const set = this.sets.get(job);
    if (set) {
      this.log.info("stopping a job's ranks", { job, client: this.client.who });
      void set.stop();
    }
  }
}

/** Longest JSON text of a rank's return value a host sends its launcher. */
export const MAX_RESULT_JSON = 256 * 1024;

/**
 * About the length of `JSON.stringify(v)` (a separator more for every value), walked only
 * until it passes `limit` (then it is some number over `limit`). Each occurrence is counted,
 * as JSON writes it, so a value shared by many places, or a cycle, passes the limit within
 * `limit` steps; a typed array or ArrayBuffer counts its length without a look at its
 * elements; an array or object whose entries alone pass the limit is not walked. A rank's
 * result is a structured clone (plain data: no getters, no toJSON but Date's). The real length
 * is at most 6 times this (a string may escape to 6 times its own), so what passes is cheap to
 * stringify. Before, the host stringified whatever a rank returned and then looked at the
 * length, on the thread that serves every guest's hypercalls: 2 s stalled for a 4 MiB
 * Uint8Array, 12 s and ~900 MiB of memory for 16 MiB.
 */
export function jsonLengthPast(v: unknown, limit: number): number {
  let total = 0;
  const stack: unknown[] = [v];
  // Every value still on the stack writes at least 2 characters (itself and a separator).
  const past = (entries: number, each: number) => total + 2 * stack.length + each * entries > limit;
  while (stack.length > 0 && total <= limit) {
    const x = stack.pop();
    total += 1; // its separator (a comma, or the end of the text)
    if (x === undefined || x === null || typeof x === "boolean") total += 4;
    else if (typeof x === "number") total += Number.isFinite(x) ? String(x).length : 4;
    else if (typeof x === "string") total += x.length + 2;
    else if (typeof x !== "object") total += 8;
    else if (ArrayBuffer.isView(x))
      total += Math.max(x.byteLength, 6 * ((x as { length?: number }).length ?? 0));
    else if (x instanceof ArrayBuffer || x instanceof SharedArrayBuffer)
      total += 2; // JSON writes {}
    else if (x instanceof Date) total += 26;
    else if (x instanceof String || x instanceof Number || x instanceof Boolean) stack.push(x.valueOf());
    else if (Array.isArray(x)) {
      total += 2;
      if (past(x.length, 2)) return limit + 1;
      for (let i = x.length - 1; i >= 0; i--) stack.push(x[i]);
    } else {
      total += 2;
      const keys = Object.keys(x);
      if (past(keys.length, 5)) return limit + 1;
      for (const k of keys) {
        total += k.length + 3;
        stack.push((x as Record<string, unknown>)[k]);
      }
    }
  }
  return total;
}

/**
 * A rank's return value as it travels to its launcher: as JSON of at most MAX_RESULT_JSON
 * characters, with `dropped` saying why it does not travel. Bounded work whatever it is:
 * jsonLengthPast before JSON.stringify.
 */
export function wireResult(v: unknown): { result?: unknown; dropped?: string } {
  if (v === undefined) return {};
  if (jsonLengthPast(v, MAX_RESULT_JSON) > MAX_RESULT_JSON)
    return { dropped: `its return value is over ${MAX_RESULT_JSON} bytes as JSON, more than a host sends` };
  try {
    const s = JSON.stringify(v);
    if (s === undefined) return { dropped: "its return value has no JSON form" };
    if (s.length > MAX_RESULT_JSON)
      return { dropped: `its return value is over ${MAX_RESULT_JSON} bytes as JSON, more than a host sends` };
    return { result: JSON.parse(s) as unknown };
  } catch (e) {
    return { dropped: `its return value has no JSON form (${String((e as Error).message).slice(0, 200)})` };
  }
}
