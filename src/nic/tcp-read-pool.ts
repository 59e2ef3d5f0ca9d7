/**
 * Reads from a TCP socket into buffers the reader gives back, instead of a new one per read.
 *
 * Why: a socket's 'data' event brings each read (64 KiB at most) in a Buffer node:net has just
 * allocated outside the V8 heap. On a link's bulk connection a cross-host stream makes 16 such
 * buffers a MiB; the receiving NIC's isolate counted them as external memory and collected
 * garbage for it — 230 scavenges "for external memory pressure" and 17 full collections in one
 * `bench stream --scope cross-host --sizes 1M` (2 with pooled reads), their marking on the same
 * two cores as the four threads of the chain. Read into buffers used again, that stream moved
 * 21–26% more (and the bare chain, bench/chain-worker.ts, which reads the same way now, 17–35%).
 *
 * How: node:net's `onread` option (a buffer, or a function that returns the next one) is a
 * constructor option only, so a socket node:net made for us — one `net.Server` accepted, or
 * one that went through the link's handshake — is handed to a new `net.Socket` over the same
 * handle, as node:net itself wraps an accepted handle. That takes node:net's `_handle`, not a
 * documented field (nor is `_readableState`, whose `ended` says the peer's FIN was read): where
 * they are missing, the socket has writes in flight or its peer has finished, adoptPooledReads
 * answers null and the caller keeps the socket as it is ('data' events, as before).
 *
 * The two socket objects stay paired: the old one never touches the handle again, and each
 * one's close destroys the other, so whoever holds the old one (a listener's list of its
 * sockets, whose destroy() is the listener's close; node:net's count of a server's
 * connections) sees it close when the connection does, and closing it still closes it.
 */
import net from "node:net";

/** Bytes a busy socket's read takes at most: node:net's own read size (it suggests 64 KiB to libuv). */
export const READ_BYTES = 64 * 1024;
/**
 * Bytes a quiet socket's read takes: a socket holds its next read's buffer until data comes,
 * so one whose last read did not fill its buffer (the end of a burst, a link's acks and
 * credits, an idle link) holds 4 KiB, not 64; a read that fills its buffer makes the next one
 * READ_BYTES again.
 */
export const SMALL_READ_BYTES = 4 * 1024;

/**
 * MYRIXEN_POISON_READS=1 (read when this module loads, so set before the NIC threads start):
 * every buffer given back is filled with POISON_BYTE, so code that kept a view of a frame or a
 * chunk after its turn (link.ts: a frame is the receiver's only during onFrame) reads garbage
 * at once instead of another read's bytes some time later. The test suite turns it on where
 * traffic crosses real links.
 */
const POISON = process.env.MYRIXEN_POISON_READS === "1";
/** What a given-back buffer holds under MYRIXEN_POISON_READS. */
export const POISON_BYTE = 0xdb;

/**
 * Read buffers waiting to be used again, shared by the sockets of one thread (a NIC's links):
 * at most `keep` of each size, so what a thread holds for reads it is not doing is bounded
 * however many links it has; beyond, a buffer given back is left to the garbage collector.
 */
export class SpareReadBuffers {
  readonly large: ArrayBuffer[] = [];
  readonly small: ArrayBuffer[] = [];
  /** `poison`: fill each buffer given back with POISON_BYTE (default: MYRIXEN_POISON_READS). */
  constructor(
    readonly keep: number,
    readonly poison = POISON,
  ) {}
}

/**
 * The buffers one link's sockets read into: taken from the thread's spares (or made), given
 * back once what was read into them is parsed. A buffer a socket still holds when it closes
 * goes with this pool, never to another socket.
 */
export class ReadPool {
  /** Every buffer this pool handed out and not yet got back (so a stranger's is never kept). */
  private readonly out = new Set<ArrayBuffer>();

  constructor(private readonly spares: SpareReadBuffers) {}

  /** A buffer of `bytes` (READ_BYTES or SMALL_READ_BYTES) for the next read. */
  take(bytes: number = READ_BYTES): Buffer {
    const list = bytes === SMALL_READ_BYTES ? this.spares.small : this.spares.large;
    const size = bytes === SMALL_READ_BYTES ? SMALL_READ_BYTES : READ_BYTES;
    const ab = list.pop() ?? new ArrayBuffer(size);
    this.out.add(ab);
    return Buffer.from(ab, 0, size);
  }

  /** A chunk read into one of this pool's buffers is parsed: the buffer may take a read again. */
  give(chunk: Uint8Array): void {
    const ab = chunk.buffer as ArrayBuffer;
    if (!this.out.delete(ab)) return;
    if (this.spares.poison) new Uint8Array(ab).fill(POISON_BYTE);
    const list = ab.byteLength === SMALL_READ_BYTES ? this.spares.small : this.spares.large;
    if (list.length < this.spares.keep) list.push(ab);
  }

  /** Buffers handed out and not given back (for tests). */
  get outstanding(): number {
    return this.out.size;
  }
}

interface HandleHolder {
  _handle?: { readStart?: unknown; readStop?: unknown } | null;
  /** node:net's read state: `ended` once the peer's FIN was read (the handle reads no more). */
  _readableState?: { ended?: unknown };
}

/** `socket` has the node:net handle adoption takes (one that starts and stops reading). */
export function handleReads(socket: net.Socket): boolean {
  const handle = (socket as unknown as HandleHolder)._handle;
  return handle != null && typeof handle.readStart === "function" && typeof handle.readStop === "function";
}

/**
 * `socket` (connected, paused, nothing listening for 'data') as a socket that reads into
 * `pool`'s buffers and hands each read to `onChunk` — `chunk` lies in a buffer of the pool,
 * valid until given back with pool.give(chunk). Answers the new socket, paused (resume() to
 * read), the bytes the old one had read and not yet handed out (they come first), and whether
 * its reads go into the pool (false: node:net did not take `onread`, and the new socket hands
 * `onChunk` node:net's own buffers); or null where the socket cannot be adopted (see the header),
 * `socket` untouched.
 */
export function adoptPooledReads(
  socket: net.Socket,
  pool: ReadPool,
  onChunk: (chunk: Buffer) => void,
): { socket: net.Socket; buffered: Buffer; pooled: boolean } | null {
  const holder = socket as unknown as HandleHolder;
  const handle = holder._handle;
  if (
    handle == null ||
    !handleReads(socket) ||
    socket.destroyed ||
    socket.connecting ||
    socket.writableLength > 0 ||
    socket.readableFlowing === true ||
    // Someone listens for 'data': the drain below would hand it the buffered bytes too.
    socket.listenerCount("data") > 0 ||
    // The peer's FIN was read already: the old socket alone still says 'end' after its bytes.
    holder._readableState?.ended !== false
  )
    return null;
  // What node:net read before the handover is in the old socket's buffer: it comes first.
  const parts: Buffer[] = [];
  for (let b = socket.read() as Buffer | null; b !== null; b = socket.read() as Buffer | null) parts.push(b);
  const buffered = parts.length === 1 ? parts[0] : Buffer.concat(parts);
  let next = SMALL_READ_BYTES;
  const taken = pool.outstanding;
  const adopted = new net.Socket({
    handle,
    allowHalfOpen: socket.allowHalfOpen,
    // Not reading until the owner resumes it (the handshake's bytes are parsed first).
    pauseOnCreate: true,
    onread: {
      buffer: () => pool.take(next),
      callback: (n: number, buf: Uint8Array) => {
        // A full buffer: more may be waiting (a stream), so read large; a read short of its
        // buffer emptied the kernel's queue, so the socket may now wait long: read small.
        next = n === buf.length ? READ_BYTES : SMALL_READ_BYTES;
        onChunk(Buffer.from(buf.buffer, buf.byteOffset, n));
        return true;
      },
    },
  } as net.SocketConstructorOpts);
  // The old socket lets go of the handle: its destroy() no longer closes the connection under
  // the new one (the pairing below closes it instead).
  holder._handle = null;
  adopted.once("close", () => socket.destroy());
  socket.once("close", () => adopted.destroy());
  // node:net asks for the first buffer as it wraps the handle; a node:net that did not would
  // drop every read of a socket that expects its buffers: it gets 'data' events instead.
  const pooled = pool.outstanding > taken;
  if (!pooled) adopted.on("data", onChunk);
  return { socket: adopted, buffered, pooled };
}
