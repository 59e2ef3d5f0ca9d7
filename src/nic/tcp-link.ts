/**
 * A Link over a node:net TCP socket, between the NICs of two host processes (or two NICs in
 * one process). The socket lives on the NIC's own thread: nic-worker.ts attaches TCP links
 * for the specs `{ kind: "tcp", host, port, key }` (connect) and `{ kind: "tcp-listen", port,
 * key }` (accept peers) through attachTcpSpec() below.
 *
 * Handshake (protocol version 2; both sides hold the cluster key, at least 32 bytes, which
 * never crosses the wire):
 *   1. each side sends a 48-byte hello — u32 magic "MXTL", u16 protocol version, u16 reserved
 *      (0), u32 sender NIC id, u32 FRAME_MAX, 32 random bytes (its nonce) — little-endian;
 *   2. the connecting side ("dial") sends its 32-byte proof: HMAC-SHA256(key, label, version,
 *      role, prover's NIC id, verifier's NIC id, prover's nonce, verifier's nonce);
 *   3. the accepting side checks it (crypto.timingSafeEqual) and only then sends its own proof
 *      (role "accept"), so a peer that cannot prove the key learns nothing but a nonce;
 *   4. the connecting side checks that proof; then frames flow.
 * Fresh nonces on both sides stop replays, the role stops a proof being reflected back, the
 * NIC ids bind the proof to the claimed identity. A bad hello (magic, version, NIC id, frame
 * size), a wrong proof, a close or the deadline drops the connection with a logged reason
 * (remote address) and a count (tcpLinkStats); only a link that passed all four steps reaches
 * the NIC, so an unauthenticated peer never displaces an attached link.
 *
 * Accepted sockets get TCP_ACCEPT_DEADLINE_MS (2 s) from accept for the whole handshake, and
 * a listener keeps at most TCP_MAX_PENDING_HANDSHAKES sockets in the handshake: a new one
 * beyond that drops the OLDEST, so a static flood of idle connections cannot keep a real
 * peer (which finishes in a few round trips) out. Refusals are logged at most
 * REFUSALS_LOGGED_PER_WINDOW per 10 s per listener, then counted in one summary line.
 *
 * After the handshake, a length outside [FRAME_HEADER_BYTES, FRAME_MAX], a header checkFrame
 * refuses, an unknown frame type, or a frame cut off by the close drops the connection and
 * counts it; nothing throws into the NIC. Every byte from the socket is hostile input.
 *
 * Goodbye: a length prefix of 0 (no frame) says the sender closes on purpose (detachLink): the
 * receiving side then does not try to reconnect. A connection that ends without one (the peer
 * NIC was stopped or crashed, the network failed, a stream fault) is retried by the side that
 * connected, with backoff (RECONNECT_MIN_MS doubling to RECONNECT_MAX_MS), until the host
 * detaches that peer or the NIC stops; the listening side accepts the new (authenticated)
 * connection, which replaces any link it still has to that NIC.
 *
 * Back-pressure: send() copies the frame into one write and refuses (false) while the socket's
 * write buffer is above a high-water mark and still draining; onWritable fires on 'drain'. So
 * the queued bytes stay below the mark plus one frame. Receiving parses each chunk at once into
 * one FRAME_MAX buffer (TCP's own flow control bounds the rest).
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import net from "node:net";
import { checkFrame, F_LENGTH, FRAME_HEADER_BYTES, FRAME_MAX, FrameType, getWord } from "./frame.js";
import type { Link } from "./link.js";

export const TCP_LINK_MAGIC = 0x4c54584d; // "MXTL" in little-endian bytes
/** 2: hellos carry a nonce and both sides prove the cluster key (1 had no authentication). */
export const TCP_LINK_VERSION = 2;
export const TCP_NONCE_BYTES = 32;
export const TCP_HELLO_BYTES = 16 + TCP_NONCE_BYTES;
export const TCP_PROOF_BYTES = 32;
/** The shortest cluster key a link accepts. */
export const TCP_LINK_MIN_KEY_BYTES = 32;
/** Default write-buffer mark above which send() pushes back (32 full frames). */
export const TCP_LINK_HIGH_WATER = 32 * FRAME_MAX;
/** Connect plus handshake allowed to a connecting side (unless its options say). */
export const TCP_HANDSHAKE_TIMEOUT_MS = 5000;
/** An accepted socket must finish the handshake this soon after accept. */
export const TCP_ACCEPT_DEADLINE_MS = 2000;
/** Sockets a listener keeps in the handshake at once (beyond: the oldest is dropped). */
export const TCP_MAX_PENDING_HANDSHAKES = 64;
export const RECONNECT_MIN_MS = 50;
export const RECONNECT_MAX_MS = 1000;
/** Connect plus handshake time allowed to one reconnection attempt (unless the spec says). */
export const RECONNECT_ATTEMPT_MS = 1000;
const REFUSALS_LOGGED_PER_WINDOW = 20;
const REFUSAL_WINDOW_MS = 10_000;
const PROOF_LABEL = Buffer.from("MyriXen TCP link proof\0", "latin1");
const ROLE_DIAL = 1;
const ROLE_ACCEPT = 2;

/**
 * Per-thread counts of connections this module refused or dropped: handshakes refused (any
 * reason), of which authFailures (a wrong proof) and evicted (over the pending bound), and
 * connections dropped after the handshake for a stream fault.
 */
export const tcpLinkStats = { handshakesRejected: 0, authFailures: 0, evicted: 0, connectionsDropped: 0 };

/** Structured detail for a log line; `level` defaults to "warn". */
export interface TcpLinkLogFields {
  level?: "warn" | "info";
  /** The peer's address, host:port. */
  remote?: string;
  reason?: string;
  peerNic?: number;
}
/** Where link events go: the message is a complete line; fields repeat its parts for JSON logs. */
export type TcpLinkLog = (message: string, fields?: TcpLinkLogFields) => void;
const defaultLog: TcpLinkLog = (m) => console.warn(m);

const KNOWN_TYPES = new Set<number>(Object.values(FrameType));

function hello(nicId: number, nonce: Buffer): Buffer {
  const b = Buffer.alloc(TCP_HELLO_BYTES);
  b.writeUInt32LE(TCP_LINK_MAGIC, 0);
  b.writeUInt16LE(TCP_LINK_VERSION, 4);
  b.writeUInt32LE(nicId >>> 0, 8);
  b.writeUInt32LE(FRAME_MAX, 12);
  nonce.copy(b, 16);
  return b;
}

/** A reason the first 6 bytes (magic, version) already give, or null. */
function checkPrefix(b: Buffer): string | null {
  const magic = b.readUInt32LE(0);
  if (magic !== TCP_LINK_MAGIC)
    return `bad magic 0x${magic.toString(16).padStart(8, "0")} (expected 0x${TCP_LINK_MAGIC.toString(16)}): not a MyriXen TCP link`;
  const version = b.readUInt16LE(4);
  if (version !== TCP_LINK_VERSION)
    return `protocol version mismatch: peer speaks version ${version}, this NIC speaks ${TCP_LINK_VERSION}${version < TCP_LINK_VERSION ? " (an unauthenticated older NIC: upgrade it)" : ""}`;
  return null;
}

/** The peer's NIC id from a full hello, or a string saying why the hello is refused. */
function parseHello(b: Buffer, ownNic: number): number | string {
  const bad = checkPrefix(b);
  if (bad) return bad;
  const peer = b.readUInt32LE(8);
  if (peer === ownNic) return `peer claims this NIC's own id ${peer}`;
  const frameMax = b.readUInt32LE(12);
  if (frameMax !== FRAME_MAX)
    return `frame size mismatch: peer's FRAME_MAX is ${frameMax}, ours ${FRAME_MAX}`;
  return peer;
}

/** HMAC-SHA256 over fixed-size fields (so no two inputs concatenate alike). */
function proof(
  key: Buffer,
  role: number,
  prover: number,
  verifier: number,
  proverNonce: Buffer,
  verifierNonce: Buffer,
): Buffer {
  const h = Buffer.alloc(11);
  h.writeUInt16LE(TCP_LINK_VERSION, 0);
  h.writeUInt8(role, 2);
  h.writeUInt32LE(prover >>> 0, 3);
  h.writeUInt32LE(verifier >>> 0, 7);
  return createHmac("sha256", key)
    .update(PROOF_LABEL)
    .update(h)
    .update(proverNonce)
    .update(verifierNonce)
    .digest();
}

function checkNicId(nicId: unknown, what: string): number {
  if (!Number.isInteger(nicId) || (nicId as number) < 0 || (nicId as number) > 0xffffffff)
    throw new RangeError(`${what}: nicId must be a u32, got ${String(nicId)}`);
  return nicId as number;
}

function checkPort(port: unknown, what: string, allowZero: boolean): number {
  if (!Number.isInteger(port) || (port as number) < (allowZero ? 0 : 1) || (port as number) > 65535)
    throw new RangeError(
      `${what}: port must be an integer in ${allowZero ? 0 : 1}..65535, got ${String(port)}`,
    );
  return port as number;
}

/** A private copy of the cluster key (it may come as a Uint8Array through postMessage). */
function checkKey(key: unknown, what: string): Buffer {
  if (!(key instanceof Uint8Array) || key.length < TCP_LINK_MIN_KEY_BYTES)
    throw new RangeError(
      `${what}: key must be the cluster key, a Uint8Array of at least ${TCP_LINK_MIN_KEY_BYTES} bytes`,
    );
  return Buffer.from(key);
}

function remoteOf(socket: net.Socket): string {
  const a = (socket.remoteAddress ?? "?").replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
  return `${a.includes(":") ? `[${a}]` : a}:${socket.remotePort ?? "?"}`;
}

/** Why a handshake failed; `auth`: the peer's proof did not match the key. */
class HandshakeError extends Error {
  constructor(
    message: string,
    readonly auth = false,
  ) {
    super(message);
  }
}

/**
 * The handshake on a fresh socket (steps 1–4 of the header), in `role`. `done` resolves with
 * the peer's NIC id and any bytes that followed its last handshake message; it rejects
 * (socket destroyed) on a bad hello, a wrong proof, a close, an error, the deadline or abort().
 */
class Handshake {
  readonly done: Promise<{ peer: number; rest: Buffer }>;
  private settled = false;
  private fail: (why: string, auth?: boolean) => void = () => {};

  /** `timeoutMs`: the time left; `statedMs`: the limit the error names (default timeoutMs). */
  constructor(
    socket: net.Socket,
    role: "dial" | "accept",
    nicId: number,
    key: Buffer,
    timeoutMs: number,
    statedMs = timeoutMs,
  ) {
    this.done = new Promise((resolve, reject) => {
      const myNonce = randomBytes(TCP_NONCE_BYTES);
      let buf: Buffer = Buffer.alloc(0);
      let peer = -1;
      let peerNonce: Buffer | null = null;
      const timer = setTimeout(() => fail(`no handshake within ${statedMs} ms`), timeoutMs);
      const cleanup = () => {
        this.settled = true;
        clearTimeout(timer);
        socket.off("data", onData);
        socket.off("close", onClose);
        socket.off("error", onError);
      };
      const fail = (why: string, auth = false) => {
        if (this.settled) return;
        cleanup();
        socket.destroy();
        reject(new HandshakeError(why, auth));
      };
      this.fail = fail;
      const onData = (chunk: Buffer) => {
        // At most one hello and one proof are buffered; what follows is handed on as `rest`.
        buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
        if (peerNonce === null) {
          if (buf.length >= 6) {
            const bad = checkPrefix(buf);
            if (bad) return fail(bad);
          }
          if (buf.length < TCP_HELLO_BYTES) return;
          const r = parseHello(buf, nicId);
          if (typeof r === "string") return fail(r);
          peer = r;
          peerNonce = Buffer.from(buf.subarray(16, TCP_HELLO_BYTES));
          buf = buf.subarray(TCP_HELLO_BYTES);
          if (role === "dial") socket.write(proof(key, ROLE_DIAL, nicId, peer, myNonce, peerNonce));
        }
        if (buf.length < TCP_PROOF_BYTES) return;
        const peerRole = role === "dial" ? ROLE_ACCEPT : ROLE_DIAL;
        const want = proof(key, peerRole, peer, nicId, peerNonce, myNonce);
        if (!timingSafeEqual(buf.subarray(0, TCP_PROOF_BYTES), want))
          return fail(
            `authentication failed: NIC ${peer}'s proof does not match this NIC's cluster key (another key, or not a member of this cluster)`,
            true,
          );
        if (role === "accept") socket.write(proof(key, ROLE_ACCEPT, nicId, peer, myNonce, peerNonce));
        const rest = Buffer.from(buf.subarray(TCP_PROOF_BYTES));
        cleanup();
        socket.pause();
        resolve({ peer, rest });
      };
      const onClose = () => {
        if (peerNonce === null)
          fail(
            `connection closed during the handshake (after ${buf.length} of ${TCP_HELLO_BYTES} hello bytes)`,
          );
        else if (role === "dial")
          fail(
            `NIC ${peer} closed the connection instead of proving the cluster key: it refused this NIC's proof (the two hosts have different cluster keys?)`,
          );
        else fail(`connection closed before NIC ${peer} proved the cluster key`);
      };
      const onError = (e: Error) => fail(`socket error during the handshake: ${e.message}`);
      socket.on("data", onData);
      socket.on("close", onClose);
      socket.on("error", onError);
      socket.write(hello(nicId, myNonce));
    });
  }

  abort(why: string): void {
    this.fail(why);
  }
}

/**
 * Logs refusals, at most REFUSALS_LOGGED_PER_WINDOW per window; the rest are counted and
 * summed up in one line when the window ends (a flood must not flood the log too).
 */
class RefusalLog {
  private windowStart = 0;
  private logged = 0;
  private suppressed = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly log: TcpLinkLog,
    private readonly nicId: number,
  ) {}

  refuse(message: string, fields: TcpLinkLogFields): void {
    const now = Date.now();
    if (now - this.windowStart >= REFUSAL_WINDOW_MS) {
      this.flush();
      this.windowStart = now;
      this.logged = 0;
    }
    if (this.logged++ < REFUSALS_LOGGED_PER_WINDOW) {
      this.log(message, { level: "warn", ...fields });
      return;
    }
    this.suppressed++;
    this.timer ??= setTimeout(() => this.flush(), REFUSAL_WINDOW_MS - (now - this.windowStart));
    this.timer.unref?.();
  }

  private flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.suppressed === 0) return;
    this.log(
      `tcp-link nic ${this.nicId}: ${this.suppressed} more refused connections were not logged one by one`,
      { level: "warn", reason: "log rate limit" },
    );
    this.suppressed = 0;
  }
}

export interface TcpLinkOptions {
  /** Write-buffer bytes above which send() pushes back (default TCP_LINK_HIGH_WATER). */
  highWaterMark?: number;
  log?: TcpLinkLog;
}

/** A Link over an authenticated socket (made by listenTcpLinks or connectTcpLink). */
export class TcpLink implements Link {
  private readonly rx = Buffer.alloc(FRAME_MAX);
  private readonly lenBuf = Buffer.alloc(4);
  private lenGot = 0;
  private frameLen = -1;
  private frameGot = 0;
  private refused = false;
  private closed = false;
  private frameCb: ((frame: Uint8Array) => void) | null = null;
  private writableCb: (() => void) | null = null;
  private readonly closeCbs: ((reason: string, goodbye: boolean) => void)[] = [];
  private readonly hwm: number;
  private readonly log: TcpLinkLog;
  /** Why the connection went down (null while up). */
  closeReason: string | null = null;
  /** Frames received before onFrame was set (dropped). */
  framesUnclaimed = 0;
  /** The peer closed on purpose (sent a goodbye). */
  goodbye = false;

  constructor(
    private readonly socket: net.Socket,
    readonly nicId: number,
    readonly peerNic: number,
    rest: Buffer,
    options: TcpLinkOptions = {},
  ) {
    this.hwm = options.highWaterMark ?? TCP_LINK_HIGH_WATER;
    this.log = options.log ?? defaultLog;
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("drain", () => {
      if (this.refused && !this.closed) {
        this.refused = false;
        this.writableCb?.();
      }
    });
    socket.on("error", (e: Error) => this.shutdown(`socket error: ${e.message}`, false));
    socket.on("end", () => {
      if (this.lenGot > 0 || this.frameLen >= 0) this.drop("truncated frame at the close of the connection");
      else this.shutdown("closed by the peer", false);
    });
    socket.on("close", () => this.shutdown("connection closed", false));
    // Bytes that came with the hello wait a turn, so that whoever gets the link can set onFrame.
    setImmediate(() => {
      if (this.closed) return;
      if (rest.length > 0) this.onData(rest);
      socket.resume();
    });
  }

  send(frame: Uint8Array): boolean {
    if (this.closed || frame.length > FRAME_MAX) return false;
    if (this.socket.writableNeedDrain && this.socket.writableLength >= this.hwm) {
      this.refused = true;
      return false;
    }
    // Only the bytes the header accounts for go on the wire (a caller may pass a longer buffer).
    const n = checkFrame(frame) >= 0 ? FRAME_HEADER_BYTES + getWord(frame, F_LENGTH) : frame.length;
    const out = Buffer.allocUnsafe(4 + n);
    out.writeUInt32LE(n, 0);
    out.set(frame.subarray(0, n), 4);
    this.socket.write(out);
    return true;
  }

  onFrame(cb: (frame: Uint8Array) => void): void {
    this.frameCb = cb;
  }

  onWritable(cb: () => void): void {
    this.writableCb = cb;
  }

  /**
   * Called once when the connection goes down, by close() or by the peer or an error;
   * `goodbye`: the peer closed on purpose (do not reconnect).
   */
  onClose(cb: (reason: string, goodbye: boolean) => void): void {
    if (this.closed) cb(this.closeReason ?? "closed", this.goodbye);
    else this.closeCbs.push(cb);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Ends the connection on purpose: queued frames are flushed, then a goodbye; nothing more is delivered. */
  close(): void {
    if (!this.closed && !this.socket.destroyed) this.socket.write(Buffer.alloc(4));
    this.shutdown("closed locally", true);
  }

  private shutdown(reason: string, graceful: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    this.frameCb = null;
    this.writableCb = null;
    if (graceful) {
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 1000).unref();
    } else {
      this.socket.destroy();
    }
    for (const cb of this.closeCbs.splice(0)) {
      try {
        cb(reason, this.goodbye);
      } catch {
        // A close listener's failure is not the link's.
      }
    }
  }

  /** A stream fault: log it, count it, drop the connection. */
  private drop(why: string): void {
    if (this.closed) return;
    tcpLinkStats.connectionsDropped++;
    this.log(`tcp-link nic ${this.nicId} <- nic ${this.peerNic}: dropping the connection: ${why}`, {
      peerNic: this.peerNic,
      reason: why,
    });
    this.shutdown(why, false);
  }

  private onData(chunk: Buffer): void {
    let i = 0;
    while (i < chunk.length && !this.closed) {
      if (this.frameLen < 0) {
        const take = Math.min(4 - this.lenGot, chunk.length - i);
        chunk.copy(this.lenBuf, this.lenGot, i, i + take);
        this.lenGot += take;
        i += take;
        if (this.lenGot < 4) break;
        const len = this.lenBuf.readUInt32LE(0);
        this.lenGot = 0;
        if (len === 0) {
          this.goodbye = true;
          this.shutdown("detached by the peer", false);
          return;
        }
        if (len < FRAME_HEADER_BYTES || len > FRAME_MAX) {
          this.drop(`frame length ${len} outside ${FRAME_HEADER_BYTES}..${FRAME_MAX}`);
          return;
        }
        this.frameLen = len;
        this.frameGot = 0;
      }
      const take = Math.min(this.frameLen - this.frameGot, chunk.length - i);
      chunk.copy(this.rx, this.frameGot, i, i + take);
      this.frameGot += take;
      i += take;
      if (this.frameGot < this.frameLen) break;
      const frame = this.rx.subarray(0, this.frameLen);
      this.frameLen = -1;
      const type = checkFrame(frame);
      if (type < 0) {
        this.drop("a frame header checkFrame refuses (magic, version or length)");
        return;
      }
      if (!KNOWN_TYPES.has(type)) {
        this.drop(`unknown frame type ${type}`);
        return;
      }
      const cb = this.frameCb;
      if (!cb) {
        this.framesUnclaimed++;
        continue;
      }
      try {
        cb(frame);
      } catch (e) {
        this.log(`tcp-link nic ${this.nicId}: frame callback threw: ${(e as Error).message}`, {
          peerNic: this.peerNic,
        });
      }
    }
  }
}

export interface TcpLinkServer {
  readonly port: number;
  close(): Promise<void>;
}

export interface ListenTcpLinksOptions extends TcpLinkOptions {
  nicId: number;
  port: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** The cluster key (at least TCP_LINK_MIN_KEY_BYTES bytes). */
  key: Uint8Array;
  /** Each authenticated link. A throw closes that link. */
  onLink: (link: TcpLink) => void;
  /** From accept to the end of the handshake (default TCP_ACCEPT_DEADLINE_MS). */
  handshakeTimeoutMs?: number;
  /** Sockets in the handshake at once (default TCP_MAX_PENDING_HANDSHAKES); beyond, the oldest is dropped. */
  maxPendingHandshakes?: number;
}

/** A server that accepts peers and hands each link that passed the handshake to onLink. */
export function listenTcpLinks(options: ListenTcpLinksOptions): Promise<TcpLinkServer> {
  const nicId = checkNicId(options.nicId, "listenTcpLinks");
  const port = checkPort(options.port, "listenTcpLinks", true);
  const key = checkKey(options.key, "listenTcpLinks");
  const host = options.host ?? "127.0.0.1";
  const log = options.log ?? defaultLog;
  const timeoutMs = options.handshakeTimeoutMs ?? TCP_ACCEPT_DEADLINE_MS;
  const maxPending = options.maxPendingHandshakes ?? TCP_MAX_PENDING_HANDSHAKES;
  const refusals = new RefusalLog(log, nicId);
  const sockets = new Set<net.Socket>();
  /** Sockets still in the handshake, oldest first (a Map keeps insertion order). */
  const pending = new Map<net.Socket, Handshake>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {}); // reported through the handshake or the link
    const from = remoteOf(socket);
    if (pending.size >= maxPending) {
      // The oldest has had the longest to finish: a real peer takes a few round trips.
      const [oldSocket, old] = pending.entries().next().value as [net.Socket, Handshake];
      pending.delete(oldSocket);
      tcpLinkStats.evicted++;
      old.abort(`dropped unauthenticated: more than ${maxPending} connections in the handshake at once`);
    }
    const hs = new Handshake(socket, "accept", nicId, key, timeoutMs);
    pending.set(socket, hs);
    hs.done.then(
      ({ peer, rest }) => {
        pending.delete(socket);
        const link = new TcpLink(socket, nicId, peer, rest, options);
        try {
          options.onLink(link);
        } catch (e) {
          log(`tcp-link nic ${nicId}: link from nic ${peer} (${from}) refused: ${(e as Error).message}`, {
            remote: from,
            peerNic: peer,
            reason: (e as Error).message,
          });
          link.close();
        }
      },
      (e: HandshakeError) => {
        pending.delete(socket);
        tcpLinkStats.handshakesRejected++;
        if (e.auth) tcpLinkStats.authFailures++;
        refusals.refuse(`tcp-link nic ${nicId}: refused a connection from ${from}: ${e.message}`, {
          remote: from,
          reason: e.message,
        });
      },
    );
  });
  return new Promise((resolve, reject) => {
    server.once("error", (e) =>
      reject(new Error(`tcp-link nic ${nicId}: cannot listen on ${host}:${port}: ${e.message}`)),
    );
    server.listen(port, host, () => {
      server.on("error", (e) => log(`tcp-link nic ${nicId}: listener error: ${e.message}`));
      const addr = server.address() as net.AddressInfo;
      resolve({
        port: addr.port,
        close: () =>
          new Promise<void>((res) => {
            for (const s of sockets) s.destroy();
            server.close(() => res());
          }),
      });
    });
  });
}

export interface ConnectTcpLinkOptions extends TcpLinkOptions {
  nicId: number;
  host?: string;
  port: number;
  /** The cluster key (at least TCP_LINK_MIN_KEY_BYTES bytes). */
  key: Uint8Array;
  /** Connect plus handshake (default TCP_HANDSHAKE_TIMEOUT_MS). */
  timeoutMs?: number;
}

/** Connects to a peer NIC's listener; resolves with the link once both sides proved the key. */
export function connectTcpLink(options: ConnectTcpLinkOptions): Promise<TcpLink> {
  const nicId = checkNicId(options.nicId, "connectTcpLink");
  const port = checkPort(options.port, "connectTcpLink", false);
  const key = checkKey(options.key, "connectTcpLink");
  const host = options.host ?? "127.0.0.1";
  const timeoutMs = options.timeoutMs ?? TCP_HANDSHAKE_TIMEOUT_MS;
  const where = `tcp-link nic ${nicId} -> ${host}:${port}`;
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    const onError = (e: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(new Error(`${where}: ${e.message}`));
    };
    const timer = setTimeout(() => {
      socket.off("error", onError);
      socket.destroy();
      reject(new Error(`${where}: no connection within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once("error", onError);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.off("error", onError);
      socket.setNoDelay(true);
      const left = Math.max(1, deadline - Date.now());
      new Handshake(socket, "dial", nicId, key, left, timeoutMs).done.then(
        ({ peer, rest }) => {
          socket.on("error", () => {}); // until the link takes over
          resolve(new TcpLink(socket, nicId, peer, rest, options));
        },
        (e: Error) => reject(new Error(`${where}: handshake failed: ${e.message}`)),
      );
    });
  });
}

// ---- attaching from the NIC thread ---------------------------------------------------------

/** The part of the Nic engine that attachTcpSpec drives. */
export interface TcpLinkHost {
  readonly nicId: number;
  /** Throws (EBUSY) if a link to that peer is attached, unless `replace`. */
  attachLink(link: Link, replace?: boolean): void;
  detachLink(peerNic: number): void;
  /** The link went down by itself; `retrying`: a reconnection will be tried. */
  linkLost(link: Link, retrying: boolean): void;
  /** No reconnection will be tried any more for that peer. */
  forgetLink(peerNic: number): void;
  hasLink(peerNic: number): boolean;
  onStop(cb: () => void): void;
}

/** `key`: the cluster key both ends hold (never sent; see the header). */
export type TcpLinkSpec =
  | { kind: "tcp"; host?: string; port: number; timeoutMs?: number; key: Uint8Array }
  | { kind: "tcp-listen"; host?: string; port: number; key: Uint8Array };

export function isTcpLinkSpec(spec: unknown): spec is TcpLinkSpec {
  const k = (spec as { kind?: unknown } | null)?.kind;
  return k === "tcp" || k === "tcp-listen";
}

/**
 * A connecting link's life after its first connection: while its connection is up it waits;
 * when it drops without a goodbye it reconnects with backoff, until cancelled.
 */
class Reconnector {
  cancelled = false;
  link: TcpLink | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private backoffMs = RECONNECT_MIN_MS;
  private attempts = 0;
  readonly where: string;

  constructor(
    private readonly nic: TcpLinkHost,
    readonly peerNic: number,
    private readonly host: string,
    private readonly port: number,
    private readonly timeoutMs: number,
    private readonly key: Buffer,
    private readonly log: TcpLinkLog,
  ) {
    this.where = `tcp-link nic ${nic.nicId} -> nic ${peerNic} (${host}:${port})`;
  }

  /** Watches a connection just attached. */
  watch(link: TcpLink): void {
    this.link = link;
    link.onClose((reason, goodbye) => {
      if (this.link !== link) return;
      this.link = null;
      const retry = !this.cancelled && !goodbye;
      this.nic.linkLost(link, retry);
      if (!retry) {
        if (!this.cancelled)
          this.log(`${this.where}: link down (${reason}); not reconnecting`, {
            peerNic: this.peerNic,
            reason,
          });
        this.forget();
        return;
      }
      this.log(`${this.where}: link down (${reason}); reconnecting`, { peerNic: this.peerNic, reason });
      this.backoffMs = RECONNECT_MIN_MS;
      this.attempts = 0;
      this.schedule();
    });
  }

  cancel(): void {
    this.cancelled = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.forget();
  }

  private forget(): void {
    this.cancelled = true;
    const map = reconnectors.get(this.nic);
    if (map?.get(this.peerNic) === this) map.delete(this.peerNic);
    this.nic.forgetLink(this.peerNic);
  }

  private schedule(): void {
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.attempt();
    }, this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, RECONNECT_MAX_MS);
  }

  private async attempt(): Promise<void> {
    if (this.cancelled) return;
    this.attempts++;
    let link: TcpLink;
    try {
      link = await connectTcpLink({
        nicId: this.nic.nicId,
        host: this.host,
        port: this.port,
        key: this.key,
        timeoutMs: this.timeoutMs,
        log: this.log,
      });
    } catch (e) {
      if (this.cancelled) return;
      // Every attempt at first, then once in 10: a long outage should not flood the log.
      if (this.attempts <= 3 || this.attempts % 10 === 0)
        this.log(
          `${this.where}: reconnection attempt ${this.attempts} failed (${(e as Error).message}); next in ${this.backoffMs} ms`,
          { peerNic: this.peerNic, reason: (e as Error).message },
        );
      this.schedule();
      return;
    }
    if (this.cancelled) {
      link.close();
      return;
    }
    if (link.peerNic !== this.peerNic) {
      this.log(`${this.where}: the listener is now NIC ${link.peerNic}; retrying`);
      link.close();
      this.schedule();
      return;
    }
    if (this.nic.hasLink(this.peerNic)) {
      // The peer reached us another way meanwhile (it connected to our listener): keep that one.
      this.log(`${this.where}: a link to NIC ${this.peerNic} is attached already; not reconnecting`, {
        level: "info",
        peerNic: this.peerNic,
      });
      link.close();
      this.forget();
      return;
    }
    try {
      this.nic.attachLink(link);
    } catch (e) {
      this.log(`${this.where}: reconnected but the NIC refused the link: ${(e as Error).message}`);
      link.close();
      this.forget();
      return;
    }
    this.log(`${this.where}: link up again (attempt ${this.attempts})`, {
      level: "info",
      peerNic: this.peerNic,
    });
    this.watch(link);
  }
}

const reconnectors = new WeakMap<TcpLinkHost, Map<number, Reconnector>>();

function reconnectorsOf(nic: TcpLinkHost): Map<number, Reconnector> {
  let map = reconnectors.get(nic);
  if (!map) {
    const m = new Map<number, Reconnector>();
    reconnectors.set(nic, m);
    nic.onStop(() => {
      for (const r of [...m.values()]) r.cancel();
    });
    map = m;
  }
  return map;
}

/**
 * Stops reconnecting to `peerNic` (the host detaches it). Returns whether a reconnecting link
 * existed; its connection, if up, is still attached (the caller detaches it).
 */
export function cancelTcpReconnect(nic: TcpLinkHost, peerNic: number): boolean {
  const r = reconnectors.get(nic)?.get(peerNic);
  if (!r) return false;
  r.cancel();
  return true;
}

/**
 * Carries out a TCP link spec on the NIC's thread: "tcp" connects and attaches the link
 * (resolves after the handshake; a first connection that fails rejects) and from then on
 * reconnects it whenever it drops without a goodbye; "tcp-listen" resolves once listening and
 * attaches each peer that connects and proves the key, replacing a link that peer had. Both
 * need the spec's `key`; `log` gets every link event (nic-worker.ts sends them to the host).
 */
export async function attachTcpSpec(
  nic: TcpLinkHost,
  spec: unknown,
  log: TcpLinkLog = defaultLog,
): Promise<TcpLinkServer | TcpLink> {
  // Never the spec itself in a message: it holds the key.
  if (!isTcpLinkSpec(spec))
    throw new RangeError(`not a tcp link spec: kind ${JSON.stringify((spec as { kind?: unknown })?.kind)}`);
  const s = spec as Partial<{ host: unknown; port: unknown; timeoutMs: unknown }>;
  const key = checkKey((spec as { key?: unknown }).key, `tcp link (${spec.kind})`);
  if (s.host !== undefined && typeof s.host !== "string")
    throw new RangeError("tcp link: host must be a string");
  if (s.timeoutMs !== undefined && (!Number.isInteger(s.timeoutMs) || (s.timeoutMs as number) < 1))
    throw new RangeError("tcp link: timeoutMs must be a positive integer");
  if (spec.kind === "tcp") {
    const host = spec.host ?? "127.0.0.1";
    const link = await connectTcpLink({
      nicId: nic.nicId,
      host,
      port: spec.port,
      key,
      timeoutMs: spec.timeoutMs,
      log,
    });
    // An explicit attach wins over a reconnection still trying for that peer.
    cancelTcpReconnect(nic, link.peerNic);
    try {
      nic.attachLink(link); // throws EBUSY if a link to that NIC is attached
    } catch (e) {
      link.close();
      throw e;
    }
    const r = new Reconnector(
      nic,
      link.peerNic,
      host,
      spec.port,
      spec.timeoutMs ?? RECONNECT_ATTEMPT_MS,
      key,
      log,
    );
    reconnectorsOf(nic).set(link.peerNic, r);
    r.watch(link);
    return link;
  }
  return listenTcpLinks({
    nicId: nic.nicId,
    host: spec.host,
    port: spec.port,
    key,
    log,
    onLink: (link) => {
      // Only a peer that proved the cluster key gets here. A NIC that connects again (it
      // restarted, or its old connection died unnoticed) replaces its old link.
      const replacing = nic.hasLink(link.peerNic);
      nic.attachLink(link, true);
      log(
        `tcp-link nic ${nic.nicId} <- nic ${link.peerNic}: link up${replacing ? " (replaces the previous connection)" : ""}`,
        { level: "info", peerNic: link.peerNic },
      );
      link.onClose((reason) => {
        nic.linkLost(link, false);
        if (nic.hasLink(link.peerNic)) return;
        log(`tcp-link nic ${nic.nicId} <- nic ${link.peerNic}: link down (${reason})`, {
          peerNic: link.peerNic,
          reason,
        });
      });
    },
  });
}
