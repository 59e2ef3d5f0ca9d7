/**
 * Where a rank is, for `myrixen run --timeout`'s report of a stuck job: a few words of a small
 * SharedArrayBuffer per rank (made by the host that runs it, handed in guest.args.job.state)
 * that the MPI library writes when it is about to block — which call, on which peer and tag,
 * and a count of blocking calls — and the host reads. No message per call, no clock read
 * (Date.now() costs ~200 ns on some machines), nothing on a call that does not block: plain
 * stores of a few words when a wait is about to block, one when it ends. How long a rank has
 * been waiting is the host's part: it looks at the count a few times a second (StateWatch)
 * and notes when a wait began.
 *
 * The host treats the words as untrusted guest data: any value decodes to a line, never an
 * exception. This file is imported by guest code (the MPI library), so it uses no Node module.
 */

/** Bytes of a rank's state buffer. */
export const RANK_STATE_BYTES = 32;

/** Int32 words: phase, call, peer, tag, direction, count of blocking calls. */
const PHASE = 0;
const CALL = 1;
const PEER = 2;
const TAG = 3;
const DIRECTION = 4;
const SEQ = 5;

/** Which way the awaited message goes. */
export const SENDING = 1;
export const RECEIVING = 2;

/** Not in a blocking call (the last call's words stay, for "last in ..."). */
export const PHASE_OUTSIDE = 0;
/** Blocked in the call the words name. */
export const PHASE_BLOCKED = 1;
/** MPI_Finalize has returned. */
export const PHASE_FINALIZED = 2;

/**
 * The name of the error a rank ends with when it returned from main after MPI.init without
 * MPI_Finalize: mpirun's rule (Open MPI aborts such a job: "exiting improperly"), since the
 * other ranks may wait for it forever. A name, so it survives the wire between hosts.
 */
export const NOT_FINALIZED = "MpiNotFinalized";

/** "No peer" / "no tag" in the words (a wildcard is -1, MPI's ANY_SOURCE / ANY_TAG). */
export const NONE = -2;

/** The calls a rank can block in, by code (the index). */
export const CALL_NAMES = [
  "",
  "MPI_Init",
  "MPI_Send",
  "MPI_Recv",
  "MPI_Wait",
  "MPI_Waitall",
  "MPI_Waitany",
  "MPI_Sendrecv",
  "MPI_Probe",
  "MPI_Barrier",
  "MPI_Bcast",
  "MPI_Reduce",
  "MPI_Allreduce",
  "MPI_Gather",
  "MPI_Scatter",
  "MPI_Gatherv",
  "MPI_Scatterv",
  "MPI_Allgather",
  "MPI_Alltoall",
  "MPI_Allgatherv",
  "MPI_Alltoallv",
  "MPI_Comm_dup",
  "MPI_Comm_split",
  "MPI_Finalize",
] as const;
export type CallName = Exclude<(typeof CALL_NAMES)[number], "">;

/** Code of a call by the name the MPI library uses in its messages ("allreduce") or MPI's ("MPI_Allreduce"). */
const CODE_BY_NAME = new Map<string, number>();
for (let i = 1; i < CALL_NAMES.length; i++) {
  const n = CALL_NAMES[i];
  CODE_BY_NAME.set(n, i);
  CODE_BY_NAME.set(n.slice(4).toLowerCase(), i);
  CODE_BY_NAME.set(n.slice(4).toLowerCase().replace("comm_", ""), i);
}

export function callCode(name: string): number {
  return CODE_BY_NAME.get(name) ?? 0;
}

/** The guest side: the MPI library writes its blocking calls here. */
export class RankStateWriter {
  private readonly words: Int32Array;

  constructor(buffer: SharedArrayBuffer) {
    this.words = new Int32Array(buffer, 0, 6);
  }

  /**
   * About to block in `code`, for a message `direction` (SENDING, RECEIVING) to or from `peer`
   * (a world rank, -1 any, NONE) with `tag` (-1 any, NONE: a collective's own tag).
   */
  block(code: number, direction: number, peer: number, tag: number): void {
    const w = this.words;
    w[CALL] = code;
    w[DIRECTION] = direction;
    w[PEER] = peer;
    w[TAG] = tag;
    w[SEQ] = (w[SEQ] + 1) | 0;
    w[PHASE] = PHASE_BLOCKED;
  }

  unblock(): void {
    this.words[PHASE] = PHASE_OUTSIDE;
  }

  finalized(): void {
    this.words[PHASE] = PHASE_FINALIZED;
  }
}

/** A usable state buffer from guest.args (undefined otherwise: the program runs without the report). */
export function rankStateWriter(buffer: unknown): RankStateWriter | undefined {
  if (typeof SharedArrayBuffer === "undefined" || !(buffer instanceof SharedArrayBuffer)) return undefined;
  if (buffer.byteLength < RANK_STATE_BYTES) return undefined;
  return new RankStateWriter(buffer);
}

function peerTag(direction: number, peer: number, tag: number): string {
  if (peer === NONE) return "";
  const t = tag === NONE ? "" : tag === -1 ? ", any tag" : `, tag ${tag}`;
  if (direction === SENDING) return `(dest ${peer}${t})`;
  return `(source ${peer === -1 ? "any" : peer}${t})`;
}

/**
 * The host side of one rank's words: sample() (a few times a second) notes when the rank began
 * its current wait; describe() says where it is, e.g. "waiting in MPI_Recv(source 0, tag 7)
 * for 12.0 s". Any value in the words decodes to a line.
 */
export class StateWatch {
  private readonly words: Int32Array;
  private seq = 0;
  private blocked = false;
  private since = 0;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.words = new Int32Array(buffer, 0, 6);
  }

  sample(now: number): void {
    const blocked = this.words[PHASE] === PHASE_BLOCKED;
    const seq = this.words[SEQ];
    if (blocked && (!this.blocked || seq !== this.seq)) this.since = now;
    this.blocked = blocked;
    this.seq = seq;
  }

  /** The rank's MPI_Finalize returned (its words say so; a guest that lies only fails its own job). */
  get finalized(): boolean {
    return this.words[PHASE] === PHASE_FINALIZED;
  }

  describe(now: number): string {
    this.sample(now);
    const w = this.words;
    const phase = w[PHASE];
    const call = w[CALL];
    const known = Number.isInteger(call) && call > 0 && call < CALL_NAMES.length;
    const what = known
      ? `${CALL_NAMES[call]}${peerTag(w[DIRECTION], w[PEER], w[TAG])}`
      : `an unknown call (code ${call})`;
    if (phase === PHASE_FINALIZED) return "past MPI_Finalize, still running";
    if (phase === PHASE_BLOCKED) return `waiting in ${what} for ${((now - this.since) / 1000).toFixed(1)} s`;
    if (call === 0) return "running, not in an MPI call";
    return `running, not in an MPI call (last blocked in ${what})`;
  }
}
