/**
 * A Link over a node:net TCP socket, between the NICs of two host processes (or two NICs in
 * one process). The socket lives on the NIC's own thread: nic-worker.ts attaches TCP links
 * for the specs `{ kind: "tcp", host, port }` (connect) and `{ kind: "tcp-listen", port }`
 * (accept peers) through attachTcpSpec() below.
 *
 * Wire: each side first sends a 16-byte hello — u32 magic "MXTL", u16 protocol version,
 * u16 reserved (0), u32 sender NIC id, u32 FRAME_MAX — all little-endian, then frames, each
 * behind a u32 little-endian length prefix. A bad hello (magic, version, NIC id) drops the
 * connection with a logged reason and nothing else. After the hello, a length outside
 * [FRAME_HEADER_BYTES, FRAME_MAX], a header checkFrame refuses, an unknown frame type, or a
 * frame cut off by the close drops the connection and counts it (tcpLinkStats); nothing
 * throws into the NIC. Every byte from the socket is hostile input.
 *
 * Goodbye: a length prefix of 0 (no frame) says the sender closes on purpose (detachLink): the
 * receiving side then does not try to reconnect. A connection that ends without one (the peer
 * NIC was stopped or crashed, the network failed, a stream fault) is retried by the side that
 * connected, with backoff (RECONNECT_MIN_MS doubling to RECONNECT_MAX_MS), until the host
 * detaches that peer or the NIC stops; the listening side accepts the new connection, which
 * replaces any link it still has to that NIC.
 *
 * Back-pressure: send() copies the frame into one write and refuses (false) while the socket's
 * write buffer is above a high-water mark and still draining; onWritable fires on 'drain'. So
 * the queued bytes stay below the mark plus one frame. Receiving parses each chunk at once into
 * one FRAME_MAX buffer (TCP's own flow control bounds the rest).
 */
import net from "node:net";
import {
  checkFrame,
  F_LENGTH,
  FRAME_HEADER_BYTES,
  FRAME_MAX,
  FrameType,
  getWord,
  type Link,
} from "./link.js";

export const TCP_LINK_MAGIC = 0x4c54584d; // "MXTL" in little-endian bytes
export const TCP_LINK_VERSION = 1;
export const TCP_HELLO_BYTES = 16;
/** Default write-buffer mark above which send() pushes back (32 full frames). */
export const TCP_LINK_HIGH_WATER = 32 * FRAME_MAX;
export const TCP_HANDSHAKE_TIMEOUT_MS = 5000;
export const RECONNECT_MIN_MS = 50;
export const RECONNECT_MAX_MS = 1000;
/** Connect plus handshake time allowed to one reconnection attempt (unless the spec says). */
export const RECONNECT_ATTEMPT_MS = 1000;

/** Per-thread counts of connections this module dropped (handshake refusals and bad streams). */
export const tcpLinkStats = { handshakesRejected: 0, connectionsDropped: 0 };

export type TcpLinkLog = (message: string) => void;
const defaultLog: TcpLinkLog = (m) => console.warn(m);

const KNOWN_TYPES = new Set<number>(Object.values(FrameType));

function hello(nicId: number): Buffer {
  const b = Buffer.alloc(TCP_HELLO_BYTES);
  b.writeUInt32LE(TCP_LINK_MAGIC, 0);
  b.writeUInt16LE(TCP_LINK_VERSION, 4);
  b.writeUInt32LE(nicId >>> 0, 8);
  b.writeUInt32LE(FRAME_MAX, 12);
  return b;
}

/** The peer's NIC id from a hello, or a string saying why the hello is refused. */
function parseHello(b: Buffer, ownNic: number): number | string {
  const magic = b.readUInt32LE(0);
  if (magic !== TCP_LINK_MAGIC)
    return `bad magic 0x${magic.toString(16).padStart(8, "0")} (expected 0x${TCP_LINK_MAGIC.toString(16)}): not a MyriXen TCP link`;
  const version = b.readUInt16LE(4);
  if (version !== TCP_LINK_VERSION)
    return `protocol version mismatch: peer speaks version ${version}, this NIC speaks ${TCP_LINK_VERSION}`;
  const peer = b.readUInt32LE(8);
  if (peer === ownNic) return `peer claims this NIC's own id ${peer}`;
  const frameMax = b.readUInt32LE(12);
  if (frameMax !== FRAME_MAX)
    return `frame size mismatch: peer's FRAME_MAX is ${frameMax}, ours ${FRAME_MAX}`;
  return peer;
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

/**
 * Reads the 16-byte hello from a fresh socket. Resolves with the peer's NIC id and any bytes
 * that followed the hello in the same chunk; rejects (socket destroyed) on a bad hello, a
 * close, an error or the timeout.
 */
function readHello(
  socket: net.Socket,
  ownNic: number,
  timeoutMs: number,
): Promise<{ peer: number; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const got = Buffer.alloc(TCP_HELLO_BYTES);
    let n = 0;
    const timer = setTimeout(() => fail(`no handshake within ${timeoutMs} ms`), timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("close", onClose);
      socket.off("error", onError);
    };
    const fail = (why: string) => {
      cleanup();
      socket.destroy();
      reject(new Error(why));
    };
    const onData = (chunk: Buffer) => {
      const take = Math.min(TCP_HELLO_BYTES - n, chunk.length);
      chunk.copy(got, n, 0, take);
      n += take;
      if (n < TCP_HELLO_BYTES) return;
      const r = parseHello(got, ownNic);
      if (typeof r === "string") {
        fail(r);
        return;
      }
      cleanup();
      socket.pause();
      resolve({ peer: r, rest: chunk.subarray(take) });
    };
    const onClose = () =>
      fail(`connection closed during the handshake (after ${n} of ${TCP_HELLO_BYTES} bytes)`);
    const onError = (e: Error) => fail(`socket error during the handshake: ${e.message}`);
    socket.on("data", onData);
    socket.on("close", onClose);
    socket.on("error", onError);
  });
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
    this.log(`tcp-link nic ${this.nicId} <- nic ${this.peerNic}: dropping the connection: ${why}`);
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
        this.log(`tcp-link nic ${this.nicId}: frame callback threw: ${(e as Error).message}`);
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
  /** Each authenticated link. A throw closes that link. */
  onLink: (link: TcpLink) => void;
  handshakeTimeoutMs?: number;
}

/** A server that accepts peers and hands each link that passed the handshake to onLink. */
export function listenTcpLinks(options: ListenTcpLinksOptions): Promise<TcpLinkServer> {
  const nicId = checkNicId(options.nicId, "listenTcpLinks");
  const port = checkPort(options.port, "listenTcpLinks", true);
  const host = options.host ?? "127.0.0.1";
  const log = options.log ?? defaultLog;
  const timeoutMs = options.handshakeTimeoutMs ?? TCP_HANDSHAKE_TIMEOUT_MS;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {}); // reported through readHello or the link
    const from = `${socket.remoteAddress}:${socket.remotePort}`;
    socket.write(hello(nicId));
    readHello(socket, nicId, timeoutMs).then(
      ({ peer, rest }) => {
        const link = new TcpLink(socket, nicId, peer, rest, options);
        try {
          options.onLink(link);
        } catch (e) {
          log(`tcp-link nic ${nicId}: link from nic ${peer} (${from}) refused: ${(e as Error).message}`);
          link.close();
        }
      },
      (e: Error) => {
        tcpLinkStats.handshakesRejected++;
        log(`tcp-link nic ${nicId}: dropping connection from ${from}: ${e.message}`);
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
  /** Connect plus handshake (default TCP_HANDSHAKE_TIMEOUT_MS). */
  timeoutMs?: number;
}

/** Connects to a peer NIC's listener; resolves with the link once both hellos checked out. */
export function connectTcpLink(options: ConnectTcpLinkOptions): Promise<TcpLink> {
  const nicId = checkNicId(options.nicId, "connectTcpLink");
  const port = checkPort(options.port, "connectTcpLink", false);
  const host = options.host ?? "127.0.0.1";
  const timeoutMs = options.timeoutMs ?? TCP_HANDSHAKE_TIMEOUT_MS;
  const where = `tcp-link nic ${nicId} -> ${host}:${port}`;
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
      socket.write(hello(nicId));
      readHello(socket, nicId, timeoutMs).then(
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

export type TcpLinkSpec =
  | { kind: "tcp"; host?: string; port: number; timeoutMs?: number }
  | { kind: "tcp-listen"; host?: string; port: number };

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
        if (!this.cancelled) this.log(`${this.where}: link down (${reason}); not reconnecting`);
        this.forget();
        return;
      }
      this.log(`${this.where}: link down (${reason}); reconnecting`);
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
        timeoutMs: this.timeoutMs,
        log: this.log,
      });
    } catch (e) {
      if (this.cancelled) return;
      // Every attempt at first, then once in 10: a long outage should not flood the log.
      if (this.attempts <= 3 || this.attempts % 10 === 0)
        this.log(
          `${this.where}: reconnection attempt ${this.attempts} failed (${(e as Error).message}); next in ${this.backoffMs} ms`,
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
      this.log(`${this.where}: a link to NIC ${this.peerNic} is attached already; not reconnecting`);
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
    this.log(`${this.where}: link up again (attempt ${this.attempts})`);
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
 * attaches each peer that connects, replacing a link that peer had.
 */
export async function attachTcpSpec(
  nic: TcpLinkHost,
  spec: unknown,
  log: TcpLinkLog = defaultLog,
): Promise<TcpLinkServer | TcpLink> {
  if (!isTcpLinkSpec(spec)) throw new RangeError(`not a tcp link spec: ${JSON.stringify(spec)}`);
  const s = spec as Partial<{ host: unknown; port: unknown; timeoutMs: unknown }>;
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
    log,
    onLink: (link) => {
      // A NIC that connects again (it restarted, or its old connection died unnoticed) replaces its old link.
      const replacing = nic.hasLink(link.peerNic);
      nic.attachLink(link, true);
      log(
        `tcp-link nic ${nic.nicId} <- nic ${link.peerNic}: link up${replacing ? " (replaces the previous connection)" : ""}`,
      );
      link.onClose((reason) => {
        nic.linkLost(link, false);
        if (nic.hasLink(link.peerNic)) return;
        log(`tcp-link nic ${nic.nicId} <- nic ${link.peerNic}: link down (${reason})`);
      });
    },
  });
}
