/**
 * The control protocol between a launcher (`myrixen run`) and a host (`myrixen host`), and
 * between hosts that link up from `--peers`: newline-delimited JSON over TCP, every line at
 * most MAX_LINE_BYTES, every message validated with zod on arrival (both ends treat the other
 * as untrusted).
 *
 * Handshake (version 4), before any request: the client's `hello` carries WIRE_VERSION, its
 * role, its name and its nonce; the host answers `challenge` with its nonce; the client sends
 * `auth` with its proof of the cluster key (auth.ts controlProof), which covers its whole hello
 * and both nonces; only if it matches does the host send its `hello`, which says who it is
 * (hostname, NIC id, link address, slots) and carries the host's proof over the same, which
 * the client checks in turn. So a client's role cannot be changed on the way: an observer's
 * proof relayed under a launcher's hello fails. Anything else first, a wrong proof or no
 * proof in time gets one `error` line and the connection closes.
 *
 * Client → host: hello, auth, then link (make sure the NIC is linked to these peers), start
 * (ranks of a job, with the job's endpoint key), peers (the MPI address relay), stop (a job),
 * states (where a job's ranks are: the call each blocks in, for --timeout),
 * status, snapshot (the host as src/host/snapshot.ts describes it), xenstore (a subtree),
 * ping.
 * Host → client: challenge, hello, then reply (to link/start), status, snapshot, xenstore,
 * output (a rank's line), output-file (a result file a rank asks its launcher to write),
 * addr (a rank's MX address), exit (a rank ended), log, error (why the host drops the
 * connection), pong.
 *
 * Clients say what they are in their hello: a launcher, a peer host, or an observer (the
 * toolstack commands and the dashboard), which may only ask status, snapshot and xenstore.
 * A host that serves inspection only (the embedded host of `myrixen start`/`run`) says so
 * in its hello (`observeOnly`, no link address) and refuses jobs.
 */
import type net from "node:net";
import * as z from "zod";
import { HostSnapshotSchema } from "../host/snapshot.js";
import { QosPolicySchema } from "../myrixen/qos-schema.js";
import type { XenStoreTreeNode } from "../xen/xenstore.js";
import { LINK_TIMEOUT_MAX_MS } from "./config-limits.js";
import { isJobKey } from "./protocol.js";

/**
 * 2: the handshake proves the cluster key; start carries the job's key. 3: a rank's result
 * file goes to its launcher (output-file), which writes it; no host writes one. 4: the proofs
 * cover the client's hello (role, name, version), not only the nonces, so that an observer's
 * proof cannot be relayed to open a launcher's session.
 */
export const WIRE_VERSION = 4;
/** Longest line either side accepts; a longer one is garbage and drops the connection. */
export const MAX_LINE_BYTES = 1 << 20;
/** Longest line a host accepts before the client proved the key (handshake lines are short). */
export const MAX_HANDSHAKE_LINE_BYTES = 4096;
/** A rank's output line is cut to this many characters before it is sent. */
export const MAX_OUTPUT_LINE = 64 * 1024;
/** Largest job a host accepts ranks of. */
export const MAX_RANKS = 4096;
/** Above this many bytes queued towards a slow client, rank output is dropped (and counted). */
export const MAX_QUEUED_BYTES = 64 << 20;
/**
 * A host reads no more of a client's requests while this many bytes of its answers (replies
 * and events; not rank output, which MAX_QUEUED_BYTES bounds) wait in the host's memory for
 * the client to read, and reads on once half of them went to the kernel. A client that asks
 * and never reads once made the host keep 64 MiB of answers per connection, its heap filled
 * and the host (with every tenant's jobs) ended.
 */
export const ANSWERS_QUEUED_MAX = 256 * 1024;

const reqId = z.int().min(0).max(0x7fffffff);
const u32 = z.int().min(0).max(0xffffffff);
const nicId = z.int().min(0).max(0xfffffffe);
const rank = z
  .int()
  .min(0)
  .max(MAX_RANKS - 1);
const jobId = z.string().regex(/^[A-Za-z0-9_.:@-]{1,128}$/, "a job id of 1-128 characters [A-Za-z0-9_.:@-]");
const hostName = z.string().min(1).max(255);
const port = z.int().min(1).max(65535);
const nonce = z.string().regex(/^[0-9a-f]{64}$/, "32 bytes as 64 lowercase hex characters");
const proof = nonce;
/** A job's MX endpoint key: a random u32, never 0 or the constant every job once shared. */
const jobKey = z.int().refine(isJobKey, "a job key (a random u32 other than 0 and 0x4d504921)");
export const RANK_PATHS = ["native", "bypass", "split"] as const;
export type RankPath = (typeof RANK_PATHS)[number];

export const LinkPeerSchema = z.strictObject({
  nicId,
  host: hostName,
  port,
  label: z.string().max(300),
});
export type LinkPeer = z.infer<typeof LinkPeerSchema>;

const ClientHello = z.strictObject({
  type: z.literal("hello"),
  version: z.int(),
  role: z.enum(["launcher", "peer", "observer"]),
  name: z.string().max(256),
  nonce,
});
const Auth = z.strictObject({ type: z.literal("auth"), proof });
const Link = z.strictObject({
  type: z.literal("link"),
  id: reqId,
  peers: z.array(LinkPeerSchema).max(1024),
  timeoutMs: z.int().min(1).max(LINK_TIMEOUT_MAX_MS),
});
const Start = z.strictObject({
  type: z.literal("start"),
  id: reqId,
  job: jobId,
  size: z.int().min(1).max(MAX_RANKS),
  path: z.enum(RANK_PATHS),
  program: z.string().min(1).max(4096),
  argv: z.array(z.string().max(65536)).max(4096),
  ranks: z.array(rank).min(1).max(MAX_RANKS),
  key: jobKey,
  pages: z
    .int()
    .min(1)
    .max(1 << 20)
    .optional(),
  maxHeapMb: z.int().min(16).max(16384).optional(),
  maxBufferMb: z
    .int()
    .min(16)
    .max(1 << 20)
    .optional(),
  /** The ranks' process.env (myrixen run -x). */
  env: z
    .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/), z.string().max(65536))
    .refine((e) => Object.keys(e).length <= 256, "at most 256 variables")
    .optional(),
  qos: QosPolicySchema.optional(),
});
const Peers = z.strictObject({
  type: z.literal("peers"),
  job: jobId,
  peers: z.array(z.strictObject({ nic: u32, endpoint: u32 })).max(MAX_RANKS),
});
const Stop = z.strictObject({ type: z.literal("stop"), job: jobId });
/** Where a job's ranks on the host are (the launcher's --timeout report). */
const StatesRequest = z.strictObject({ type: z.literal("states"), id: reqId, job: jobId });
const StatusRequest = z.strictObject({ type: z.literal("status"), id: reqId });
const SnapshotRequest = z.strictObject({ type: z.literal("snapshot"), id: reqId });
/** Most XenStore nodes a reply carries (a longer listing is cut, and says so). */
export const MAX_XENSTORE_NODES = 5000;
const XenStoreRequest = z.strictObject({
  type: z.literal("xenstore"),
  id: reqId,
  path: z.string().min(1).max(3072),
  maxNodes: z.int().min(1).max(MAX_XENSTORE_NODES).optional(),
});
const Ping = z.strictObject({ type: z.literal("ping") });

export const ClientMessageSchema = z.discriminatedUnion("type", [
  ClientHello,
  Auth,
  Link,
  Start,
  Peers,
  Stop,
  StatesRequest,
  StatusRequest,
  SnapshotRequest,
  XenStoreRequest,
  Ping,
]);
export type ClientMessage = z.infer<typeof ClientMessageSchema>;
export type ClientHello = z.infer<typeof ClientHello>;
export type StartMessage = z.infer<typeof Start>;

const HostHello = z.strictObject({
  type: z.literal("hello"),
  version: z.int(),
  hostname: z.string().max(255),
  nicId,
  /** Where its NIC accepts links (absent: it takes no jobs, see observeOnly). */
  link: z.strictObject({ host: hostName, port }).optional(),
  slots: z.int().min(1).max(4096),
  pid: z.int().min(0),
  paths: z.array(z.string().max(32)).max(16),
  /** The host's proof of the cluster key (after the client's). */
  proof,
  /** It serves inspection only (status, snapshot, xenstore): the embedded host of `myrixen start`/`run`. */
  observeOnly: z.string().max(256).optional(),
});
const Challenge = z.strictObject({ type: z.literal("challenge"), nonce });
const Reply = z.strictObject({
  type: z.literal("reply"),
  id: reqId,
  ok: z.boolean(),
  /** "refused": the host cannot do this as asked (nothing started); "failed": it tried and failed. */
  code: z.enum(["refused", "failed"]).optional(),
  error: z.string().max(65536).optional(),
});
const EXIT_STATES = ["shutdown", "crashed", "destroyed"] as const;
const Status = z.strictObject({
  type: z.literal("status"),
  id: reqId,
  nicId,
  /** Guest domains and native processes alive on the host (all jobs). */
  guests: z.int().min(0),
  links: z.array(u32).max(65536),
  jobs: z
    .array(
      z.strictObject({
        job: jobId,
        ranks: z
          .array(z.strictObject({ rank, domid: z.int().min(0), state: z.string().max(32) }))
          .max(MAX_RANKS),
      }),
    )
    .max(1024),
});
const SnapshotReply = z.strictObject({
  type: z.literal("snapshot"),
  id: reqId,
  ok: z.boolean(),
  snapshot: HostSnapshotSchema.optional(),
  error: z.string().max(65536).optional(),
});
const XenStoreNodeSchema: z.ZodType<XenStoreTreeNode> = z.lazy(() =>
  z.strictObject({
    name: z.string().max(3072),
    value: z.string().max(4096),
    perms: z.string().max(4096),
    children: z.array(XenStoreNodeSchema).max(MAX_XENSTORE_NODES),
  }),
);
const XenStoreReply = z.strictObject({
  type: z.literal("xenstore"),
  id: reqId,
  ok: z.boolean(),
  tree: XenStoreNodeSchema.optional(),
  nodes: z.int().min(0).optional(),
  truncated: z.boolean().optional(),
  error: z.string().max(65536).optional(),
});
const Output = z.strictObject({
  type: z.literal("output"),
  job: jobId,
  rank,
  stream: z.enum(["stdout", "stderr"]),
  line: z.string().max(MAX_OUTPUT_LINE + 64),
});
/** Longest result file a rank may have its launcher write (it travels in one line). */
export const MAX_OUTPUT_FILE_BYTES = MAX_LINE_BYTES - 8192;
const OutputFile = z.strictObject({
  type: z.literal("output-file"),
  job: jobId,
  rank,
  file: z.string().max(4096),
  text: z.string().max(MAX_OUTPUT_FILE_BYTES),
  /** Why the host could not send the file (then text is empty and the rank fails). */
  error: z.string().max(4096).optional(),
});
const StatesReply = z.strictObject({
  type: z.literal("states"),
  id: reqId,
  ranks: z.array(z.strictObject({ rank, state: z.string().max(512) })).max(MAX_RANKS),
});
const Addr = z.strictObject({ type: z.literal("addr"), job: jobId, rank, nic: u32, endpoint: u32 });
const Exit = z.strictObject({
  type: z.literal("exit"),
  job: jobId,
  rank,
  state: z.enum(EXIT_STATES),
  exitCode: z.int().min(0).max(255),
  error: z
    .strictObject({
      name: z.string().max(256),
      message: z.string().max(65536),
      stack: z.string().max(65536).optional(),
    })
    .optional(),
  result: z.unknown().optional(),
});
const Log = z.strictObject({
  type: z.literal("log"),
  level: z.enum(["error", "warn", "info", "debug"]),
  msg: z.string().max(65536),
});
const ErrorMessage = z.strictObject({ type: z.literal("error"), msg: z.string().max(65536) });
const Pong = z.strictObject({ type: z.literal("pong") });

export const HostMessageSchema = z.discriminatedUnion("type", [
  HostHello,
  Challenge,
  Reply,
  Status,
  SnapshotReply,
  XenStoreReply,
  Output,
  OutputFile,
  StatesReply,
  Addr,
  Exit,
  Log,
  ErrorMessage,
  Pong,
]);
export type HostMessage = z.infer<typeof HostMessageSchema>;
export type HostHello = z.infer<typeof HostHello>;
export type StatusMessage = z.infer<typeof Status>;
export type SnapshotMessage = z.infer<typeof SnapshotReply>;
export type XenStoreMessage = z.infer<typeof XenStoreReply>;
export type ExitMessage = z.infer<typeof Exit>;

/** zod's issues as one line each: which field, what was expected. */
export function describeIssues(error: z.ZodError, prefix = ""): string[] {
  const out: string[] = [];
  for (const issue of error.issues) {
    const path = issue.path
      .map((p, i) => (typeof p === "number" ? `[${p}]` : `${i > 0 ? "." : ""}${String(p)}`))
      .join("");
    const at = prefix + path;
    if (issue.code === "unrecognized_keys")
      for (const k of issue.keys) out.push(`unknown field "${at ? `${at}.` : ""}${k}"`);
    else out.push(`field "${at || "(message)"}": ${issue.message}`);
  }
  return out;
}

/** Messages of the handshake; each is valid only at its step. */
const HANDSHAKE_TYPES = new Set(["hello", "challenge", "auth"]);

/**
 * Checks one parsed line against a schema. `expect`: the one type the handshake step allows
 * now (null once it is over: then no handshake type). Returns the message, or a sentence
 * saying what is wrong (an unknown type, a request before authentication and a version
 * mismatch are named as such).
 */
export function validateMessage<T>(
  value: unknown,
  schema: z.ZodType<T>,
  types: readonly string[],
  expect: "hello" | "challenge" | "auth" | null,
): T | string {
  if (value === null || typeof value !== "object" || Array.isArray(value))
    return "a message must be a JSON object";
  const type = (value as { type?: unknown }).type;
  if (typeof type !== "string") return 'a message needs a string "type"';
  if (!types.includes(type)) return `unknown message type ${JSON.stringify(type).slice(0, 80)}`;
  if (expect === "hello" && type !== "hello") return `the first message must be "hello", got "${type}"`;
  if (expect === "auth" && type !== "auth")
    return `"${type}" before authenticating: the client must prove the cluster key first ("auth")`;
  if (expect === "challenge" && type !== "challenge") return `expected the host's "challenge", got "${type}"`;
  if (expect === null && HANDSHAKE_TYPES.has(type))
    return type === "hello" ? "a second hello" : `a "${type}" after the handshake`;
  if (type === "hello") {
    const v = (value as { version?: unknown }).version;
    if (v !== WIRE_VERSION)
      return `protocol version mismatch: the peer speaks version ${JSON.stringify(v)}, this side speaks ${WIRE_VERSION}`;
  }
  const r = schema.safeParse(value);
  if (!r.success) return `bad "${type}" message: ${describeIssues(r.error).slice(0, 5).join("; ")}`;
  return r.data;
}

export const CLIENT_TYPES = [
  "hello",
  "auth",
  "link",
  "start",
  "peers",
  "stop",
  "states",
  "status",
  "snapshot",
  "xenstore",
  "ping",
] as const;
export const HOST_TYPES = [
  "hello",
  "challenge",
  "reply",
  "status",
  "snapshot",
  "xenstore",
  "output",
  "output-file",
  "states",
  "addr",
  "exit",
  "log",
  "error",
  "pong",
] as const;

export interface LineChannelHandlers {
  /** One parsed JSON value per line (not yet validated). */
  line(value: unknown): void;
  /** Garbage: an oversized line, bytes that are not UTF-8, a line that is not JSON. */
  garbage(why: string): void;
  close(why: string): void;
}

const decoder = new TextDecoder("utf-8", { fatal: true });
const PAUSED_FOR_ANSWERS = 1;
const PAUSED_BY_OWNER = 2;

/**
 * Newline-delimited JSON on a socket, with the line length bounded on both directions and a
 * write side that never queues without bound (send() reports what it could not queue).
 */
export class LineChannel {
  private chunks: Buffer[] = [];
  private pending = 0;
  private closed = false;
  closeReason: string | null = null;
  /** Longest line accepted now (a host lowers it until its client has authenticated). */
  maxLineBytes = MAX_LINE_BYTES;
  /** Bytes of answers (sends that may not be dropped) written and not yet taken by the kernel. */
  private answersQueued = 0;
  /** Why reading is paused: PAUSED_FOR_ANSWERS, PAUSED_BY_OWNER (holdReading), or 0. */
  private pausedFor = 0;
  /** What was read and not yet parsed when reading paused (one socket read at most). */
  private held: Buffer | null = null;

  constructor(
    readonly socket: net.Socket,
    private readonly handlers: LineChannelHandlers,
    /**
     * Reading pauses while more than this many bytes of answers wait unsent (0: never): a
     * host's side sets ANSWERS_QUEUED_MAX, a client's none (it reads whatever comes).
     */
    private readonly pauseAbove = 0,
  ) {
    socket.setNoDelay(true);
    socket.on("data", (b: Buffer) => this.onData(b));
    socket.on("error", (e: Error) => this.shutdown(`socket error: ${e.message}`));
    socket.on("end", () =>
      this.shutdown(this.pending > 0 ? "closed in the middle of a line" : "closed by the peer"),
    );
    socket.on("close", () => this.shutdown("connection closed"));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get queuedBytes(): number {
    return this.socket.writableLength;
  }

  /** Whether reading is paused: the peer has answers to read (pauseAbove), or the owner holds it. */
  get readingPaused(): boolean {
    return this.pausedFor !== 0;
  }

  /** The owner pauses reading (its own bound, e.g. requests being answered) or lets it go on. */
  holdReading(hold: boolean): void {
    this.pause(PAUSED_BY_OWNER, hold);
  }

  /**
   * Writes one message. Returns false (nothing written) when the channel is closed or more
   * than MAX_QUEUED_BYTES wait for a slow reader: a droppable message is dropped, any other
   * closes the channel.
   */
  send(msg: unknown, droppable = false): boolean {
    if (this.closed || this.socket.destroyed) return false;
    if (this.socket.writableLength > MAX_QUEUED_BYTES) {
      if (droppable) return false;
      // A peer that never reads its replies must not make this side buffer without bound.
      this.destroy(`the peer has not read ${MAX_QUEUED_BYTES} bytes sent to it`);
      return false;
    }
    const line = `${JSON.stringify(msg)}\n`;
    if (droppable || this.pauseAbove === 0) {
      this.socket.write(line);
      return true;
    }
    // Counted in characters (a bound: never more than its bytes) until the kernel has it.
    const n = line.length;
    this.answersQueued += n;
    this.socket.write(line, () => {
      this.answersQueued -= n;
      if (this.answersQueued <= this.pauseAbove / 2) this.pause(PAUSED_FOR_ANSWERS, false);
    });
    if (this.answersQueued > this.pauseAbove) this.pause(PAUSED_FOR_ANSWERS, true);
    return true;
  }

  private pause(reason: number, on: boolean): void {
    const was = this.pausedFor;
    this.pausedFor = on ? was | reason : was & ~reason;
    if (was === 0 && this.pausedFor !== 0) this.socket.pause();
    if (was === 0 || this.pausedFor !== 0 || this.closed) return;
    // Resumed: what was read before the pause goes first, then the socket again.
    const held = this.held;
    this.held = null;
    this.socket.resume();
    if (held !== null) this.onData(held);
  }

  /** Flushes what is queued, then closes. */
  end(why = "closed locally"): void {
    if (this.closed) return;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.shutdown(why);
  }

  destroy(why = "closed locally"): void {
    this.socket.destroy();
    this.shutdown(why);
  }

  private shutdown(why: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = why;
    this.chunks = [];
    this.held = null;
    this.handlers.close(why);
  }

  private onData(b: Buffer): void {
    if (this.pausedFor !== 0) {
      // Read before the pause took: kept, in order, for when reading resumes.
      this.held = this.held === null ? b : Buffer.concat([this.held, b]);
      return;
    }
    let start = 0;
    while (!this.closed) {
      if (this.pausedFor !== 0) {
        if (start < b.length) this.held = b.subarray(start);
        return;
      }
      const nl = b.indexOf(10, start);
      if (nl < 0) {
        const rest = b.length - start;
        if (this.pending + rest > this.maxLineBytes) {
          this.garbage(`a line longer than ${this.maxLineBytes} bytes`);
          return;
        }
        if (rest > 0) {
          this.chunks.push(b.subarray(start));
          this.pending += rest;
        }
        return;
      }
      if (this.pending + (nl - start) > this.maxLineBytes) {
        this.garbage(`a line longer than ${this.maxLineBytes} bytes`);
        return;
      }
      const piece = b.subarray(start, nl);
      const line = this.pending > 0 ? Buffer.concat([...this.chunks, piece]) : piece;
      this.chunks = [];
      this.pending = 0;
      start = nl + 1;
      if (line.length === 0 || (line.length === 1 && line[0] === 13)) continue;
      let text: string;
      try {
        text = decoder.decode(line);
      } catch {
        this.garbage("bytes that are not UTF-8 text");
        return;
      }
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch {
        this.garbage(`a line that is not JSON: ${JSON.stringify(text.slice(0, 60))}`);
        return;
      }
      this.handlers.line(value);
    }
  }

  private garbage(why: string): void {
    if (this.closed) return;
    this.handlers.garbage(why);
  }
}
