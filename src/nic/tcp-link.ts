/**
 * A Link over two node:net TCP sockets (main and bulk, below), between the NICs of two host
 * processes (or two NICs in one process). The sockets live on the NIC's own thread:
 * nic-worker.ts attaches TCP links for the specs `{ kind: "tcp", host, port, key }` (connect)
 * and `{ kind: "tcp-listen", port, key }` (accept peers) through tcp-attach.ts. A connection carries frames only after the
 * handshake (tcp-handshake.ts) has proved that both ends hold the cluster key; the listener
 * and the dialer that set a link up are in tcp-link-setup.ts.
 *
 * Framing: each frame (frame.ts) travels behind a u32 little-endian length prefix. After the
 * handshake, a length outside [FRAME_HEADER_BYTES, FRAME_MAX], a header checkFrame refuses,
 * an unknown frame type, or a frame cut off by the close drops the connection and counts it;
 * nothing throws into the NIC. Every byte from the socket is hostile input.
 *
 * Goodbye: a length prefix of 0 (no frame) on the main connection says the sender closes on
 * purpose (detachLink): the receiving side reads the bulk sent before it (until the bulk
 * connection ends, a second at most) and then does not try to reconnect. A link that ends
 * without one (the peer NIC was stopped or crashed, the network failed, a stream fault) is
 * retried by the side that connected (tcp-attach.ts). The goodbye and the bulk connection's
 * end travel on different connections, so a bulk connection that ends first leaves the link up
 * for BULK_END_GRACE_MS, for the goodbye to be read.
 *
 * Lent frames (Link.lend): the link owns a few FRAME_MAX buffers with room for the length
 * prefix before the frame; a frame built in one is written where it lies and the buffer comes
 * back on the write's callback (the kernel has the bytes), as a NIC's tx descriptor does. The
 * NIC builds pull data (and large SENDs) there: one copy from the guest's memory, then the
 * kernel's, where a copied frame took two. A buffer only ever holds NIC-built frames; one
 * goes out whole (header and the payload it announces) before it is lent again.
 *
 * Back-pressure: send() makes the frame one write (a copy, or the lent buffer) and refuses
 * (false) while the main socket's write buffer is above a high-water mark and still draining;
 * onWritable fires on 'drain'. So the queued bytes stay below the mark plus one frame.
 * Receiving parses each chunk at once; a frame that lies whole in the chunk is handed over
 * where it lies, others are put together in one FRAME_MAX buffer per connection (TCP's own
 * flow control bounds the rest) — except pull data for a receiver that takes it in pieces
 * (Link.onPullData, as the NIC does): its header is put together and checked, then each
 * chunk's part of the payload is handed over where it lies. A read is 64 KiB at most, so a
 * full 64 KiB reply never lies whole in one: putting it together was a second copy of every
 * byte on the receiving NIC, the busiest thread of a cross-host stream.
 *
 * Two connections (issue 16). One TCP stream would make a small frame wait behind every byte
 * of pull data written before it (B's 8 B ping-pong beside A's 1 MiB stream: 3.8× slower). So
 * a link is two connections, as real interconnects keep a queue per traffic class: the main
 * one carries every frame but pull data (and the credits and the goodbye below); the bulk one
 * only PULL_REPLY frames with a payload. The connecting side opens main, then bulk, each with
 * the full handshake; the bulk hello names the main connection (tcp-handshake.ts: lane and
 * bind, inside the proof), and the listener hands a link over only when both are up (a main
 * connection left without its bulk one is dropped at the accept deadline, a bulk one naming
 * no waiting main one is refused; both counted as refused handshakes). The wrong kind of frame
 * on either connection drops the link. The receiver parses one chunk of bulk per turn of its
 * event loop, so main frames that arrived meanwhile are parsed before the next chunk; chunks
 * read in the same turn wait in a queue (TCP_BULK_RX_QUEUE bounds it: beyond, the bulk socket
 * is paused). While it parses a chunk of either connection, both sockets are corked: the frames
 * the NIC sends in answer (a pull's next request, acks, the bulk a credit lets go) and the
 * credit leave in one write per connection.
 *
 * Bulk flow: at most TCP_BULK_WINDOW bulk bytes are on the way at once — written and not yet
 * acknowledged by the peer's link, which sends a credit on the main connection (length prefix
 * 1, then the u32 count of bulk bytes it has handed to its NIC, mod 2^32) every half window
 * received (CREDIT_EVERY at most), and CREDIT_DELAY_MS after the last bulk it got whatever the
 * count; at most TCP_BULK_QUEUE more wait in the link's queue, and send() refuses bulk
 * beyond that (onWritable fires when it may go on). A credit for more than was sent drops the
 * link. Order holds where the NIC relies on it: PULL_REPLYs stay in order among themselves (a
 * transfer's replies continue one another) and the other frames among themselves; a SEND
 * never depended on the position of a PULL_REPLY (MX orders messages by per-pair sequence
 * numbers, mx/matching.ts; a pull ends with its own replies).
 */
import { randomInt } from "node:crypto";
import type net from "node:net";
import { checkFrame, F_LENGTH, FRAME_HEADER_BYTES, FRAME_MAX, FrameType, getWord } from "./frame.js";
import type { Link } from "./link.js";
import { LANE_BULK, LANE_MAIN } from "./tcp-handshake.js";
import { adoptPooledReads, handleReads, ReadPool, SpareReadBuffers } from "./tcp-read-pool.js";

/** Default write-buffer mark above which send() pushes back (32 full frames). */
export const TCP_LINK_HIGH_WATER = 32 * FRAME_MAX;
/**
 * Bulk (PULL_REPLY) bytes on the way to the peer at once, written and not yet credited. Small
 * frames travel on the other connection, so the window no longer costs them directly; it bounds
 * what a slow receiver leaves in the kernel, and how much of the receiving NIC's time a stream
 * takes from the small frames of other endpoints. 1 MiB streamed 1 MiB messages across hosts
 * 20–30% faster than 256 KiB (1.29–1.41 against 1.02–1.10 GB/s, three rounds alternating) but a
 * bystander's 8 B ping-pong beside that stream slowed 1.43–1.66× beyond its CPU neighbour's
 * cost, against 1.1–1.3× with 256 KiB, and 3:1 weights came out 0.85–0.88 (`myrixen bench
 * isolation --quick --scope cross-host`). 512 KiB, credited every 256 KiB (CREDIT_EVERY), halves
 * the credits of 256 KiB — each a wake-up of the sending NIC, a read and a write of its bulk —
 * and with the receive queue below (one chunk a turn without pausing the socket) a cross-host
 * stream costs a 2-core VM, which it keeps CPU-bound, 80 system calls a MiB against 133–145 and
 * 1.0–1.45 ms of CPU a MiB against 1.25–1.75. `myrixen bench isolation --scope cross-host`, three
 * rounds alternating: the bystander's latency_slowdown 0.85–0.91 (256 KiB with the same receive
 * path: 0.82–0.85; the previous 256 KiB link: 0.94–1.07) while 3:1 weights streamed 1.2–1.66
 * GB/s in all (1.17–1.35; 1.0–1.15) at share_ratio 0.92–0.95 (0.95; 0.95).
 */
export const TCP_BULK_WINDOW = 512 * 1024;
/**
 * Bulk bytes queued beyond the window before send() pushes back: little, so that the NIC's
 * scheduler (remote-pull.ts serveJobs, by weight), not a deep first-come queue here, decides
 * whose bytes go next, and a NIC round copies no more than can leave soon.
 */
export const TCP_BULK_QUEUE = 256 * 1024;
/**
 * Memory of received bulk chunks waiting for their turn to be parsed (one chunk a turn of the
 * event loop; each counted as its whole read buffer) above which the bulk socket is paused until
 * half of it is parsed. A peer keeps to its bulk window, whose reads fill their buffers, so an
 * honest one stays below this (twice the default window); bulk beyond it waits in the kernel,
 * under TCP's flow control, as it would for a peer that ignores its window.
 */
export const TCP_BULK_RX_QUEUE = 2 * TCP_BULK_WINDOW;
/**
 * Parsed read buffers kept for the next reads (of each size, tcp-read-pool.ts), by all the
 * links of this thread (a NIC's) together: a cross-host stream has up to 16 chunks read and not
 * yet parsed at once (with 4 kept, one read in five made a new buffer). Besides these, each
 * socket holds the buffer of its next read: 4 KiB on a quiet link.
 */
const TCP_READ_SPARES = 16;
const spareReadBuffers = new SpareReadBuffers(TCP_READ_SPARES);
/**
 * Lent frame buffers per link at most: the bulk window and queue (768 KiB, 12 full frames) plus
 * writes the kernel has not taken yet. Beyond, lend() answers null and frames are copied.
 */
const LEND_POOL = 24;
/** Where a lent frame starts in its buffer: after 4 spare bytes and the length prefix, so its payload is 8-byte aligned. */
const LENT_FRAME_AT = 8;
/** The length prefix of a credit (link-internal; a frame is never this short). */
const CREDIT_PREFIX = 1;
/**
 * Length prefixes of a probe and its answer (link-internal, on the main connection, each with
 * a u32 token): whether the NIC at the other end still reads this connection. A NIC that
 * claims the id of a peer whose link answers is refused (tcp-attach.ts): a live link is never
 * replaced, so a key holder cannot take over another host's link by claiming its NIC id.
 */
const PING_PREFIX = 2;
const PONG_PREFIX = 3;

/**
 * Bulk bytes received between two credits, at most: half the link's own window (so a peer with
 * the same window always has the other half to send while the credit travels). Each credit is a
 * small write, and on loopback TCP a write that wakes the peer's thread costs both sides tens of
 * µs of CPU on a 2-core VM, where a cross-host stream keeps both NIC threads 80–90% busy:
 * crediting every 32 KiB (16 credits a MiB) spent about half of the receiving NIC's busy time on
 * them; every 128 KiB, its socket writes (most of them credits) still took 20–31% of its busy
 * time (CPU profiles). Half of TCP_BULK_WINDOW, which says what 256 KiB measured.
 */
const CREDIT_EVERY = 256 * 1024;
/**
 * Uncredited bulk is credited this long after the first of it came, whatever its count: a peer
 * whose window is smaller than twice our threshold (another build, other options) waits a
 * little, never for ever. The timer is left to run out rather than cleared by every credit (a
 * timer armed and cleared per credit showed in the receiving NIC's profile).
 */
const CREDIT_DELAY_MS = 1;
/**
 * A bulk connection that ends without a goodbye leaves the link up this long for the goodbye,
 * which the peer wrote on the main connection before it ended the bulk one (two connections: one
 * may be read before the other). A peer that crashed ends both, and is taken for lost at once.
 */
const BULK_END_GRACE_MS = 250;
/** Connect plus handshake allowed to a connecting side (unless its options say). */
export const TCP_HANDSHAKE_TIMEOUT_MS = 5000;
/** An accepted socket must finish the handshake this soon after accept. */
export const TCP_ACCEPT_DEADLINE_MS = 2000;
/** Sockets a listener keeps in the handshake at once (beyond, one is dropped: pending-handshakes.ts). */
export const TCP_MAX_PENDING_HANDSHAKES = 64;

/**
 * Per-thread counts of connections this module refused or dropped: handshakes refused (any
 * reason), of which authFailures (a wrong proof) and evicted (over the pending bound), and
 * connections dropped after the handshake for a stream fault.
 */
export const tcpLinkStats = {
  handshakesRejected: 0,
  authFailures: 0,
  evicted: 0,
  connectionsDropped: 0,
  /**
   * Links one of whose connections reads with 'data' events because this Node's sockets could
   * not be adopted (tcp-read-pool.ts); not those a peer's FIN or reset before the handover left so.
   */
  unpooledLinks: 0,
};
/** The first unpooled link of this thread was logged. */
let unpooledSaid = false;

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
export const defaultLog: TcpLinkLog = (m) => console.warn(m);

/** A socket's peer IP, an IPv4-mapped one as IPv4 (what a NIC bounds its links by, link-bound.ts). */
export function addressOf(socket: net.Socket): string {
  return (socket.remoteAddress ?? "?").replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
}

const KNOWN_TYPES = new Set<number>(Object.values(FrameType));

/**
 * Why a frame of `type` (checkFrame's answer), `frameLen` bytes, may not come on the bulk
 * connection (`bulkLane`) or the main one, or null: pull data (a PULL_REPLY with a payload)
 * travels on the bulk connection and nothing else does.
 */
function laneFault(type: number, frameLen: number, bulkLane: boolean): string | null {
  if (type < 0) return "a frame header checkFrame refuses (magic, version or length)";
  if (!KNOWN_TYPES.has(type)) return `unknown frame type ${type}`;
  const isBulk = type === FrameType.PullReply && frameLen > FRAME_HEADER_BYTES;
  if (isBulk === bulkLane) return null;
  return bulkLane
    ? `a frame of type ${type} on the bulk connection (only pull data travels there)`
    : "pull data on the main connection (it travels on the bulk connection)";
}

const EMPTY = Buffer.alloc(0);

export interface TcpLinkOptions {
  /** Write-buffer bytes above which send() pushes back (default TCP_LINK_HIGH_WATER). */
  highWaterMark?: number;
  /** Bulk bytes on the way at once (default TCP_BULK_WINDOW). */
  bulkWindow?: number;
  /** Bulk bytes queued beyond the window before send() pushes back (default TCP_BULK_QUEUE). */
  bulkQueue?: number;
  log?: TcpLinkLog;
}

/** One connection's receive state: the length prefix and the frame being put together. */
class FrameReader {
  readonly rx = Buffer.alloc(FRAME_MAX);
  /** The header of the frame being read in pieces (onPullData): the start of rx. */
  readonly head = this.rx.subarray(0, FRAME_HEADER_BYTES);
  /** The frame being read goes to onPullData in pieces: decided at its first byte, kept to its last. */
  pieced = false;
  readonly lenBuf = Buffer.alloc(4);
  lenGot = 0;
  frameLen = -1;
  frameGot = 0;
  /** The frame being read is link-internal: 0, or its prefix (CREDIT_PREFIX, PING_PREFIX, PONG_PREFIX; main lane). */
  control = 0;
  /** The connection ended (its 'end' came). */
  ended = false;

  constructor(readonly lane: number) {}

  get midFrame(): boolean {
    return this.lenGot > 0 || this.frameLen >= 0;
  }
}

/** A Link over two authenticated sockets, main and bulk (made by listenTcpLinks or connectTcpLink). */
export class TcpLink implements Link {
  private readonly mainRx = new FrameReader(LANE_MAIN);
  private readonly bulkRx = new FrameReader(LANE_BULK);
  private refused = false;
  private closed = false;
  private frameCb: ((frame: Uint8Array) => void) | null = null;
  /** Bulk frames that do not lie whole in a read go here in pieces, if set (onPullData). */
  private pullDataCb: ((head: Uint8Array, piece: Uint8Array, at: number, total: number) => void) | null =
    null;
  private writableCb: (() => void) | null = null;
  private readonly closeCbs: ((reason: string, goodbye: boolean) => void)[] = [];
  private readonly hwm: number;
  private readonly log: TcpLinkLog;
  private readonly bulkWindow: number;
  /** Bulk bytes queued (beyond the window) above which send() pushes back. */
  private readonly bulkQueueMark: number;
  /** Lent-frame buffers: free ones, how many exist, the one lent now (and its frame view). */
  private readonly spare: Buffer[] = [];
  private lendable = LEND_POOL;
  private lentStore: Buffer | null = null;
  private lentFrame: Uint8Array | null = null;
  /** Bulk frames (length-prefixed) waiting for the window, and their bytes; lent buffers beside them. */
  private readonly bulkQ: Buffer[] = [];
  private readonly bulkQStore: (Buffer | null)[] = [];
  private bulkQHead = 0;
  private bulkQueued = 0;
  /**
   * Bulk bytes written and not yet credited by the peer; the peer's last credit. Credits count
   * u32 bytes on the wire, kept as int32s (the same bits): past 2^31 a u32 is no V8 small
   * integer, and the code holding it is deoptimised (mx/channel.ts).
   */
  private bulkInFlight = 0;
  private bulkCredited = 0;
  private refusedBulk = false;
  /** Bulk bytes received and handed to the NIC (an int32 that wraps as the u32 it stands for), and as of the last credit sent. */
  private rxBulk = 0;
  private rxCredited = 0;
  /** Received bulk bytes that call for a credit (CREDIT_EVERY, or half this link's window). */
  private readonly creditEvery: number;
  /** Armed while a bulk connection that ended without a goodbye waits for one (BULK_END_GRACE_MS). */
  private bulkEndTimer: ReturnType<typeof setTimeout> | null = null;
  /** Armed while received bulk waits for its credit (CREDIT_DELAY_MS). */
  private creditTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly flushCredit = (): void => {
    this.creditTimer = null;
    if (!this.closed && this.rxBulk !== this.rxCredited) this.sendCredit();
  };
  private readonly creditBuf = Buffer.alloc(8);
  /** Between cork() and uncork(). */
  private corked = false;
  /**
   * Bulk chunks read from the socket and not yet parsed, and their bytes: one chunk is parsed
   * per turn of the event loop (takeBulkTurn), so the main connection's frames that came in the
   * same turn go first; the rest wait here rather than in the kernel, where pausing and
   * resuming the socket for every chunk cost two or three epoll_ctl calls each.
   */
  private readonly bulkRxQ: Buffer[] = [];
  /** The buffers the connections read into (given back as each chunk is parsed). */
  private readonly readPool = new ReadPool(spareReadBuffers);
  /** The main and the bulk connection (the sockets given, or those that took over their handles to read into readPool). */
  private readonly socket: net.Socket;
  private readonly bulk: net.Socket;
  /** Both connections read into readPool (false: one or both get node:net's 'data' events, tcp-read-pool.ts says when). */
  readonly readsPooled: boolean;
  private bulkRxQBytes = 0;
  /**
   * The memory the queued chunks hold: each its whole read buffer (64 KiB, or 4 KiB after a read
   * short of its buffer), however few bytes it carries. What pauses the socket: counted in bytes, a peer
   * trickling a few bytes a turn queued hundreds of pooled buffers under the bound.
   */
  private bulkRxQHeld = 0;
  /** A bulk chunk was parsed in this turn of the event loop: the next waits for nextBulkTurn. */
  private bulkTurnTaken = false;
  /** The bulk socket is paused: its queue reached TCP_BULK_RX_QUEUE (a peer beyond its window). */
  private bulkPaused = false;
  private readonly nextBulkTurn = (): void => {
    this.bulkTurnTaken = false;
    if (this.closed || this.bulkRxQ.length === 0) return;
    const chunk = this.bulkRxQ.shift()!;
    this.bulkRxQBytes -= chunk.length;
    this.bulkRxQHeld -= chunk.buffer.byteLength;
    if (this.bulkPaused && this.bulkRxQHeld <= TCP_BULK_RX_QUEUE / 2) {
      this.bulkPaused = false;
      this.bulk.resume();
    }
    this.takeBulkTurn(chunk);
  };
  /** Why the connection went down (null while up). */
  closeReason: string | null = null;
  /** Frames received before onFrame was set (dropped). */
  framesUnclaimed = 0;
  /** The peer closed on purpose (sent a goodbye). */
  goodbye = false;
  /** The peer's address of the main connection, host:port (for logs). */
  readonly remote: string;
  /** The peer's IP (an IPv4-mapped IPv6 address as IPv4): the NIC bounds links per address (link-bound.ts). */
  readonly address: string;
  /** Reading waits for release() (hold()); and whether the link's first turn has come. */
  private held = false;
  private started = false;
  private readonly startRest: [Buffer, Buffer];
  /** Probes waiting for their answer, by token. */
  private readonly probes = new Map<number, (alive: boolean) => void>();

  /** `socket`: the main connection; `bulk`: the bulk connection paired with it; `rest`s: bytes that came with their handshakes. */
  constructor(
    socket: net.Socket,
    readonly nicId: number,
    readonly peerNic: number,
    rest: Buffer,
    options: TcpLinkOptions,
    bulk: net.Socket,
    bulkRest: Buffer,
  ) {
    this.remote = `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`;
    this.address = addressOf(socket);
    // Both connections read into buffers used again (tcp-read-pool.ts), where node:net lets it:
    // a frame is the receiver's only during onFrame (link.ts), a bulk chunk until it is parsed.
    // What this Node cannot do is counted and said, not what a peer did (a FIN, a reset before the handover).
    const nodeCannot = [socket, bulk].some((sock) => !sock.destroyed && !handleReads(sock));
    const main = adoptPooledReads(socket, this.readPool, (chunk) => {
      this.onData(this.mainRx, chunk);
      this.readPool.give(chunk);
    });
    if (main !== null) {
      socket = main.socket;
      if (main.buffered.length > 0) rest = Buffer.concat([rest, main.buffered]);
    } else socket.on("data", (chunk: Buffer) => this.onData(this.mainRx, chunk));
    const pooled = adoptPooledReads(bulk, this.readPool, (chunk) => this.onBulkChunk(chunk));
    if (pooled !== null) {
      bulk = pooled.socket;
      if (pooled.buffered.length > 0) bulkRest = Buffer.concat([bulkRest, pooled.buffered]);
    } else bulk.on("data", (chunk: Buffer) => this.onBulkChunk(chunk));
    this.readsPooled = main?.pooled === true && pooled?.pooled === true;
    if (nodeCannot || main?.pooled === false || pooled?.pooled === false) {
      tcpLinkStats.unpooledLinks++;
      // Said once a thread: it is how this Node's sockets are.
      if (!unpooledSaid) {
        unpooledSaid = true;
        (options.log ?? defaultLog)(
          `tcp-link nic ${nicId}: a link reads with node:net's 'data' events, not into reused buffers (tcp-read-pool.ts: this Node's sockets could not be adopted); it works, with more garbage to collect`,
          { level: "info", peerNic },
        );
      }
    }
    this.socket = socket;
    this.bulk = bulk;
    this.hwm = options.highWaterMark ?? TCP_LINK_HIGH_WATER;
    this.bulkWindow = Math.max(FRAME_MAX + 4, options.bulkWindow ?? TCP_BULK_WINDOW);
    this.bulkQueueMark = Math.max(FRAME_MAX + 4, options.bulkQueue ?? TCP_BULK_QUEUE);
    this.creditEvery = Math.min(CREDIT_EVERY, Math.floor(this.bulkWindow / 2));
    this.log = options.log ?? defaultLog;
    this.startRest = [rest, bulkRest];
    socket.setNoDelay(true);
    bulk.setNoDelay(true);
    socket.on("drain", () => {
      if (this.refused && !this.closed) {
        this.refused = false;
        this.writableCb?.();
      }
    });
    for (const [sock, r, name] of [
      [socket, this.mainRx, "main"],
      [bulk, this.bulkRx, "bulk"],
    ] as const) {
      sock.on("error", (e: Error) => this.shutdown(`socket error (${name} connection): ${e.message}`, false));
      sock.on("end", () => {
        if (sock === bulk) this.drainBulkRx();
        if (this.closed) return;
        r.ended = true;
        if (r.midFrame) this.drop(`truncated frame at the close of the ${name} connection`);
        // After a goodbye, the bulk sent before it is read until the bulk connection ends.
        else if (this.goodbye) {
          if (this.bulkRx.ended) this.shutdown("detached by the peer", false);
        } else if (sock === bulk && !this.mainRx.ended && !socket.destroyed) {
          // A peer that closes on purpose writes its goodbye on the main connection before it
          // ends the bulk one, but the two race: read in one turn, the bulk's end can come
          // first. The goodbye gets a moment before the link is taken for lost.
          this.bulkEndTimer = setTimeout(
            () => this.shutdown("closed by the peer (bulk connection)", false),
            BULK_END_GRACE_MS,
          );
        } else this.shutdown(`closed by the peer (${name} connection)`, false);
      });
      sock.on("close", () => {
        if (this.goodbye && !this.bulkRx.ended && sock === socket) return;
        if (sock === bulk && this.bulkEndTimer !== null) return;
        this.shutdown("connection closed", false);
      });
    }
    // Bytes that came with the hellos wait a turn, so that whoever gets the link can set onFrame.
    setImmediate(() => {
      this.started = true;
      if (!this.held) this.start();
    });
  }

  /** A chunk from the bulk socket: parsed now if this turn has had none, else queued for the next. */
  private onBulkChunk(chunk: Buffer): void {
    if (this.closed) {
      this.readPool.give(chunk);
      return;
    }
    if (!this.bulkTurnTaken && this.bulkRxQ.length === 0) {
      this.takeBulkTurn(chunk);
      return;
    }
    this.bulkRxQ.push(chunk);
    this.bulkRxQBytes += chunk.length;
    this.bulkRxQHeld += chunk.buffer.byteLength;
    // A peer keeps to its window, which is far below the bound; one that does not waits in the kernel.
    if (this.bulkRxQHeld >= TCP_BULK_RX_QUEUE && !this.bulkPaused) {
      this.bulkPaused = true;
      this.bulk.pause();
    }
  }

  private takeBulkTurn(chunk: Buffer): void {
    this.bulkTurnTaken = true;
    setImmediate(this.nextBulkTurn);
    this.onData(this.bulkRx, chunk);
    this.readPool.give(chunk);
  }

  /** Received bulk bytes waiting for their turn to be parsed (TCP_BULK_RX_QUEUE bounds them). */
  get bulkRxQueued(): number {
    return this.bulkRxQBytes;
  }

  /** Parses every queued bulk chunk now (the bulk connection ended: nothing may be left behind). */
  private drainBulkRx(): void {
    while (this.bulkRxQ.length > 0 && !this.closed) {
      const chunk = this.bulkRxQ.shift()!;
      this.bulkRxQBytes -= chunk.length;
      this.bulkRxQHeld -= chunk.buffer.byteLength;
      this.onData(this.bulkRx, chunk);
      this.readPool.give(chunk);
    }
  }

  private start(): void {
    if (this.closed) return;
    const [rest, bulkRest] = this.startRest;
    this.startRest[0] = this.startRest[1] = EMPTY;
    if (rest.length > 0) this.onData(this.mainRx, rest);
    if (bulkRest.length > 0 && !this.closed) this.onData(this.bulkRx, bulkRest);
    if (this.closed) return;
    this.socket.resume();
    this.bulk.resume();
  }

  /** Reads nothing from the peer until release() (called before the link's first turn: a listener deciding whether to take it). */
  hold(): void {
    this.held = true;
  }

  release(): void {
    if (!this.held) return;
    this.held = false;
    if (this.started) this.start();
  }

  /**
   * Asks the peer NIC to answer on this connection: true if it does within `timeoutMs`, false
   * if not (or the link closes). A NIC answers from its event loop, whatever it is doing.
   */
  probe(timeoutMs: number): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    let token: number;
    do token = randomInt(1, 0x7fffffff);
    while (this.probes.has(token));
    return new Promise((resolve) => {
      const timer = setTimeout(() => answer(false), timeoutMs);
      timer.unref?.();
      const answer = (alive: boolean) => {
        clearTimeout(timer);
        this.probes.delete(token);
        resolve(alive);
      };
      this.probes.set(token, answer);
      this.writeControl(PING_PREFIX, token);
    });
  }

  /** Ends the link without a goodbye: the peer takes it for lost (and reconnects, if it dialed). */
  abort(reason: string): void {
    this.shutdown(reason, false);
  }

  /**
   * Writes a probe or its answer. Not while the main connection's write buffer is above the
   * mark: a peer that sends probes and reads nothing would have its answers pile up here without
   * bound; it gets none, as a peer that does not read should (a probe of ours then says false).
   */
  private writeControl(prefix: number, value: number): void {
    if (this.closed || this.socket.destroyed || this.socket.writableLength >= this.hwm) return;
    const b = Buffer.allocUnsafe(8);
    b.writeUInt32LE(prefix, 0);
    b.writeInt32LE(value, 4);
    this.socket.write(b);
  }

  send(frame: Uint8Array): boolean {
    if (this.closed || frame.length > FRAME_MAX) return false;
    // Only the bytes the header accounts for go on the wire (a caller may pass a longer buffer).
    const type = checkFrame(frame);
    const n = type >= 0 ? FRAME_HEADER_BYTES + getWord(frame, F_LENGTH) : frame.length;
    const bulk = type === FrameType.PullReply && n > FRAME_HEADER_BYTES;
    if (bulk) {
      // The peer ended the bulk connection (and our side of it ends too): nothing more goes there.
      if (this.bulkRx.ended) return false;
      if (this.bulkQueued >= this.bulkQueueMark) {
        this.refusedBulk = true;
        return false;
      }
    } else if (this.socket.writableNeedDrain && this.socket.writableLength >= this.hwm) {
      this.refused = true;
      return false;
    }
    let out: Buffer;
    let store: Buffer | null = null;
    if (
      this.lentFrame !== null &&
      frame.buffer === this.lentFrame.buffer &&
      frame.byteOffset === LENT_FRAME_AT
    ) {
      // Built in the buffer this link lent: written where it lies, the buffer back when written.
      store = this.lentStore!;
      this.lentStore = null;
      this.lentFrame = null;
      out = store.subarray(LENT_FRAME_AT - 4, LENT_FRAME_AT + n);
    } else {
      out = Buffer.allocUnsafe(4 + n);
      out.set(frame.subarray(0, n), 4);
    }
    out.writeUInt32LE(n, 0);
    if (!bulk) {
      if (store === null) this.socket.write(out);
      else this.socket.write(out, this.giveBack(store));
      return true;
    }
    this.bulkQ.push(out);
    this.bulkQStore.push(store);
    this.bulkQueued += out.length;
    this.pumpBulk();
    return true;
  }

  takesPullData(): boolean {
    if (this.closed || this.bulkRx.ended) return false;
    if (this.bulkQueued < this.bulkQueueMark) return true;
    this.refusedBulk = true;
    return false;
  }

  lend(): Uint8Array | null {
    if (this.closed) return null;
    if (this.lentFrame === null) {
      let store = this.spare.pop();
      if (store === undefined) {
        if (this.lendable === 0) return null;
        this.lendable--;
        store = Buffer.allocUnsafeSlow(LENT_FRAME_AT + FRAME_MAX);
      }
      this.lentStore = store;
      this.lentFrame = new Uint8Array(store.buffer, LENT_FRAME_AT, FRAME_MAX);
    }
    return this.lentFrame;
  }

  /** The write callback that returns a lent buffer to the pool once the socket has written it. */
  private giveBack(store: Buffer): () => void {
    return () => {
      if (!this.closed) this.spare.push(store);
    };
  }

  /** Writes queued bulk while the window allows; tells a refused sender when it may go on. */
  private pumpBulk(): void {
    if (this.bulkRx.ended) return;
    const q = this.bulkQ;
    const stores = this.bulkQStore;
    while (this.bulkQHead < q.length && this.bulkInFlight < this.bulkWindow) {
      const out = q[this.bulkQHead];
      const store = stores[this.bulkQHead];
      q[this.bulkQHead] = EMPTY;
      stores[this.bulkQHead++] = null;
      this.bulkQueued -= out.length;
      this.bulkInFlight += out.length;
      if (store === null) this.bulk.write(out);
      else this.bulk.write(out, this.giveBack(store));
    }
    if (this.bulkQHead === q.length) {
      q.length = 0;
      stores.length = 0;
      this.bulkQHead = 0;
    } else if (this.bulkQHead > 1024) {
      q.splice(0, this.bulkQHead);
      stores.splice(0, this.bulkQHead);
      this.bulkQHead = 0;
    }
    if (this.refusedBulk && this.bulkQueued < this.bulkQueueMark && !this.closed) {
      this.refusedBulk = false;
      this.writableCb?.();
    }
  }

  /** The peer's link credited bulk bytes up to `total` (the u32 on the wire, read as an int32). */
  private onCredit(total: number): void {
    const acked = (total - this.bulkCredited) >>> 0;
    if (acked > this.bulkInFlight) {
      this.drop(`a credit for ${acked} bulk bytes, ${this.bulkInFlight} on the way`);
      return;
    }
    this.bulkCredited = total;
    this.bulkInFlight -= acked;
    this.pumpBulk();
  }

  /** The NIC's poll round begins: its frames leave in one write (writev) per connection at uncork. */
  cork(): void {
    if (this.corked || this.closed) return;
    this.corked = true;
    this.socket.cork();
    this.bulk.cork();
  }

  uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
    this.bulk.uncork();
  }

  onFrame(cb: (frame: Uint8Array) => void): void {
    this.frameCb = cb;
  }

  onPullData(cb: (head: Uint8Array, piece: Uint8Array, at: number, total: number) => void): void {
    this.pullDataCb = cb;
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

  /** Ends the link on purpose: queued frames are flushed, then a goodbye; nothing more is delivered. */
  close(): void {
    if (!this.closed && !this.socket.destroyed && !this.bulk.destroyed) {
      for (let i = this.bulkQHead; i < this.bulkQ.length; i++) this.bulk.write(this.bulkQ[i]);
      this.bulkQ.length = 0;
      this.bulkQStore.length = 0;
      this.socket.write(Buffer.alloc(4));
    }
    this.shutdown("closed locally", true);
  }

  private shutdown(reason: string, graceful: boolean): void {
    if (this.closed) return;
    this.closed = true;
    if (this.creditTimer !== null) clearTimeout(this.creditTimer);
    if (this.bulkEndTimer !== null) clearTimeout(this.bulkEndTimer);
    this.bulkRxQ.length = 0;
    this.bulkRxQBytes = 0;
    this.bulkRxQHeld = 0;
    this.closeReason = reason;
    this.frameCb = null;
    this.pullDataCb = null;
    this.writableCb = null;
    for (const answer of [...this.probes.values()]) answer(false);
    for (const sock of [this.socket, this.bulk]) {
      if (graceful) {
        sock.end();
        setTimeout(() => sock.destroy(), 1000).unref();
      } else {
        sock.destroy();
      }
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

  /**
   * Parses a chunk of connection `r`. The main connection carries every frame but pull data,
   * credits and the goodbye; the bulk connection only PULL_REPLY frames with a payload. A
   * frame that lies whole in the chunk is handed over where it lies (no copy), and so is each
   * piece of pull data that does not, if onPullData takes it (pullDataPiece).
   */
  private onData(r: FrameReader, chunk: Buffer): void {
    if (this.corked || this.closed) {
      this.parse(r, chunk);
      return;
    }
    // What the NIC sends in answer to these frames, and the credit, leave in one write per connection.
    this.cork();
    try {
      this.parse(r, chunk);
    } finally {
      this.uncork();
    }
  }

  private parse(r: FrameReader, chunk: Buffer): void {
    const bulkLane = r.lane === LANE_BULK;
    // Nothing counts on the main connection after the goodbye.
    if (this.goodbye && !bulkLane) return;
    let i = 0;
    while (i < chunk.length && !this.closed) {
      if (r.frameLen < 0) {
        let len: number;
        if (r.lenGot === 0 && chunk.length - i >= 4) {
          len = chunk.readUInt32LE(i);
          i += 4;
        } else {
          const take = Math.min(4 - r.lenGot, chunk.length - i);
          chunk.copy(r.lenBuf, r.lenGot, i, i + take);
          r.lenGot += take;
          i += take;
          if (r.lenGot < 4) break;
          len = r.lenBuf.readUInt32LE(0);
          r.lenGot = 0;
        }
        if (bulkLane && len <= FRAME_HEADER_BYTES) {
          this.drop(`length prefix ${len} on the bulk connection (only pull data travels there)`);
          return;
        }
        if (len === 0) {
          this.goodbye = true;
          // The bulk sent before the goodbye is still read: the bulk connection's end (or a
          // second, for a peer that never ends it) closes the link.
          if (this.bulkRx.ended || this.bulk.destroyed) this.shutdown("detached by the peer", false);
          else setTimeout(() => this.shutdown("detached by the peer", false), 1000).unref();
          return;
        }
        if (len === CREDIT_PREFIX || len === PING_PREFIX || len === PONG_PREFIX) {
          r.control = len;
          r.frameLen = 4;
          r.frameGot = 0;
          continue;
        }
        if (len < FRAME_HEADER_BYTES || len > FRAME_MAX) {
          this.drop(`frame length ${len} outside ${FRAME_HEADER_BYTES}..${FRAME_MAX}`);
          return;
        }
        r.frameLen = len;
        r.frameGot = 0;
      }
      if (
        bulkLane &&
        (r.pieced || (r.frameGot === 0 && this.pullDataCb !== null && chunk.length - i < r.frameLen))
      ) {
        r.pieced = true;
        i = this.pullDataPiece(r, chunk, i);
        continue;
      }
      let frame: Buffer;
      if (r.frameGot === 0 && chunk.length - i >= r.frameLen) {
        frame = chunk.subarray(i, i + r.frameLen);
        i += r.frameLen;
      } else {
        const take = Math.min(r.frameLen - r.frameGot, chunk.length - i);
        chunk.copy(r.rx, r.frameGot, i, i + take);
        r.frameGot += take;
        i += take;
        if (r.frameGot < r.frameLen) break;
        frame = r.rx.subarray(0, r.frameLen);
      }
      r.frameLen = -1;
      if (r.control !== 0) {
        const value = frame.readInt32LE(0);
        const control = r.control;
        r.control = 0;
        if (control === CREDIT_PREFIX) this.onCredit(value);
        else if (control === PING_PREFIX) this.writeControl(PONG_PREFIX, value);
        else this.probes.get(value)?.(true);
        continue;
      }
      const fault = laneFault(checkFrame(frame), frame.length, bulkLane);
      if (fault !== null) {
        this.drop(fault);
        return;
      }
      if (bulkLane) this.rxBulk = (this.rxBulk + 4 + frame.length) | 0;
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
    // The bulk handed to the NIC so far frees the sender's window (a credit every creditEvery
    // bytes, on the main connection: it never waits behind bulk; the rest a moment later).
    if (!this.closed && this.rxBulk !== this.rxCredited) {
      if ((this.rxBulk - this.rxCredited) >>> 0 >= this.creditEvery) this.sendCredit();
      else if (this.creditTimer === null) this.creditTimer = setTimeout(this.flushCredit, CREDIT_DELAY_MS);
    }
  }

  /**
   * Takes the part of bulk frame `r` that chunk holds from `i`, for onPullData: the header is
   * gathered (and checked once whole), then the payload there is handed over where it lies.
   * Returns where parsing goes on.
   */
  private pullDataPiece(r: FrameReader, chunk: Buffer, i: number): number {
    if (r.frameGot < FRAME_HEADER_BYTES) {
      const take = Math.min(FRAME_HEADER_BYTES - r.frameGot, chunk.length - i);
      chunk.copy(r.rx, r.frameGot, i, i + take);
      r.frameGot += take;
      i += take;
      if (r.frameGot < FRAME_HEADER_BYTES) return i;
      const fault = laneFault(checkFrame(r.head, r.frameLen), r.frameLen, true);
      if (fault !== null) {
        this.drop(fault);
        return chunk.length;
      }
    }
    const take = Math.min(r.frameLen - r.frameGot, chunk.length - i);
    if (take === 0) return i;
    const at = r.frameGot - FRAME_HEADER_BYTES;
    const total = r.frameLen - FRAME_HEADER_BYTES;
    r.frameGot += take;
    if (r.frameGot === r.frameLen) {
      this.rxBulk = (this.rxBulk + 4 + r.frameLen) | 0;
      r.frameLen = -1;
      r.pieced = false;
    }
    try {
      this.pullDataCb!(r.head, chunk.subarray(i, i + take), at, total);
    } catch (e) {
      this.log(`tcp-link nic ${this.nicId}: pull data callback threw: ${(e as Error).message}`, {
        peerNic: this.peerNic,
      });
    }
    return i + take;
  }

  private sendCredit(): void {
    this.rxCredited = this.rxBulk;
    this.creditBuf.writeUInt32LE(CREDIT_PREFIX, 0);
    this.creditBuf.writeInt32LE(this.rxBulk, 4);
    this.socket.write(Buffer.from(this.creditBuf));
  }
}
