/**
 * Eager messages in pieces through a co-resident channel (records.ts FLAG_PIECES; the channel
 * path, channel-path.ts, calls both sides). The writer's side, writePieces: one EAGER record
 * with the first CHANNEL_EAGER_PIECE bytes and the message's length, then FRAGs of transfer 0
 * with the rest, each published as soon as it is copied in, so the reader copies one piece out
 * while the writer copies the next in — the caller checked that the lane has room for all of
 * them, so nothing else comes between. The reader's side, PieceReader: the message its pieces
 * fill, which is the receive the first piece matched if it was the pair's turn and one was
 * posted, else a buffer of its own whose message is matched whole at its last piece. Every
 * piece is checked against the message under way; anything else fails that receive and the
 * peer, never throws.
 */
import { RECORD_HEADER_BYTES, RecordWord } from "../myrixen/channel-abi.js";
import { MxStatus } from "../nic/status.js";
import { copyBytes } from "../xen/copy.js";
import type { LaneReader, LaneWriter } from "./channel.js";
import type { Completion } from "./completion.js";
import type { Matching } from "./matching.js";
import {
  CHANNEL_EAGER_BYTES,
  CHANNEL_EAGER_PIECE,
  FLAG_PIECES,
  FragAux,
  MsgAux,
  PIECES_XFER,
  RecordType,
} from "./records.js";
import { FLAG_TRACED, TraceStage, traceNow } from "./trace.js";
import type { EndpointContext, InboundRecord, KeptRecord, MxRequest, Partner } from "./types.js";

/**
 * Writes `req`'s message into `w` as pieces (the lane must have room for all: LaneWriter.
 * hasRoomFor), `seq` its pair sequence number; `kick` after each piece is published. No
 * reserve here can fail, whatever the reader does meanwhile: hasRoomFor placed every piece
 * against the head position the writer holds (headSeen), and reserve() looks at the shared
 * head again only when that position shows too little room. False: the reader closed the
 * channel between two pieces, and the message is not sent (the reader drops a part).
 */
export function writePieces(
  w: LaneWriter,
  req: MxRequest,
  seq: number,
  ctx: EndpointContext,
  kick: () => void,
): boolean {
  const buf = req.buffer;
  const total = buf.length;
  const first = CHANNEL_EAGER_PIECE;
  const words = w.words;
  let at = w.reserve(first);
  let i = at >>> 2;
  let aux = i + RecordWord.Aux;
  words[i + RecordWord.Type] = RecordType.Eager | (FLAG_PIECES << 16);
  words[i + RecordWord.MatchHi] = req.matchHi;
  words[i + RecordWord.MatchLo] = req.matchLo;
  words[i + RecordWord.Length] = first;
  words[aux + MsgAux.SyncId] = req.syncId;
  words[aux + MsgAux.Seq] = seq;
  words[aux + MsgAux.Total] = total;
  words[aux + MsgAux.XpKey] = 0;
  words[aux + MsgAux.XpOffset] = 0;
  const tb = ctx.trace;
  if (tb !== undefined && req.traceId !== 0) {
    words[i + RecordWord.Type] |= FLAG_TRACED << 16;
    words[aux + MsgAux.TraceSeq] = req.traceId % 0x100000000;
    tb.record(req.traceId, TraceStage.Written, traceNow());
  }
  copyBytes(w.bytes, at + RECORD_HEADER_BYTES, buf, 0, first);
  w.commit();
  kick();
  for (let off = first; off < total; off += CHANNEL_EAGER_PIECE) {
    // The reader closed the channel meanwhile (it disconnected): it takes what was committed
    // before its close and drops a message it has only part of, so this one is not sent.
    if (w.closed) return false;
    const n = Math.min(CHANNEL_EAGER_PIECE, total - off);
    at = w.reserve(n);
    i = at >>> 2;
    aux = i + RecordWord.Aux;
    words[i + RecordWord.Type] = RecordType.Frag;
    words[i + RecordWord.MatchHi] = 0;
    words[i + RecordWord.MatchLo] = 0;
    words[i + RecordWord.Length] = n;
    words[aux + FragAux.Xfer] = PIECES_XFER;
    words[aux + FragAux.Offset] = off;
    copyBytes(w.bytes, at + RECORD_HEADER_BYTES, buf, off, n);
    w.commit();
    kick();
  }
  return true;
}

/** The message the pieces fill: the receive it matched, or (undefined) `kept.bytes`, delivered when whole. */
class Pieces {
  done: number;
  constructor(
    readonly total: number,
    readonly req: MxRequest | undefined,
    readonly kept: KeptRecord | undefined,
    readonly syncId: number,
    first: number,
  ) {
    this.done = first;
  }

  get target(): Uint8Array {
    return this.req !== undefined ? this.req.buffer : this.kept!.bytes!;
  }
}

/** What a PieceReader uses of its channel path. */
export interface PieceReaderParts {
  readonly ctx: EndpointContext;
  readonly matching: Matching;
  readonly completion: Completion;
  /** The peer wrote something no sender of ours would: fail it with `what`. */
  garbage(what: string): void;
}

/** The reading side of one channel's eager messages in pieces. */
export class PieceReader {
  private cur: Pieces | undefined;

  constructor(
    private readonly peer: Partner,
    private readonly parts: PieceReaderParts,
  ) {}

  /** A message's pieces are arriving: nothing but its next piece may come now. */
  get active(): boolean {
    return this.cur !== undefined;
  }

  /** The EAGER record with a message's first piece; `r` is the path's record to fill. */
  first(rd: LaneReader, r: InboundRecord): void {
    const a = rd.aux;
    const total = a[MsgAux.Total];
    const first = rd.length;
    if (first < 1 || total <= first || total > CHANNEL_EAGER_BYTES) {
      this.parts.garbage(`an eager message of ${total} bytes in pieces, its first of ${first} bytes`);
      return;
    }
    rd.countMessage();
    r.rndv = false;
    r.flags = rd.flags;
    r.matchHi = rd.matchHi;
    r.matchLo = rd.matchLo;
    r.length = total;
    r.syncId = a[MsgAux.SyncId];
    r.seq = a[MsgAux.Seq] | 0;
    r.region = 0;
    r.key = 0;
    r.offset = 0;
    r.traceSeq = a[MsgAux.TraceSeq];
    r.bytes = null;
    r.payload = 0;
    const req = this.parts.matching.claim(this.peer, r);
    if (req !== undefined) {
      const n = Math.min(first, req.buffer.length);
      if (n > 0) copyBytes(req.buffer, 0, rd.bytes, rd.payload, n);
      this.cur = new Pieces(total, req, undefined, r.syncId, first);
      return;
    }
    const kept = r.keep(this.peer, 0);
    kept.bytes = new Uint8Array(total);
    kept.owned = true;
    copyBytes(kept.bytes, 0, rd.bytes, rd.payload, first);
    this.cur = new Pieces(total, undefined, kept, r.syncId, first);
  }

  /** A FRAG of transfer 0: checked against the message under way, copied out, the message finished with the last. */
  piece(rd: LaneReader): void {
    const p = this.cur;
    if (p === undefined) {
      // No message in pieces under way: a stray, dropped (as a FRAG of no transfer is).
      this.parts.ctx.counters.channelErrors++;
      return;
    }
    const offset = rd.aux[FragAux.Offset];
    const n = rd.length;
    if (offset !== p.done || n < 1 || n > p.total - p.done) {
      this.fail(
        `a piece of ${n} bytes at offset ${offset} of a ${p.total}-byte eager message (expected offset ${p.done})`,
      );
      return;
    }
    const target = p.target;
    const end = Math.min(offset + n, target.length);
    if (end > offset) copyBytes(target, offset, rd.bytes, rd.payload, end - offset);
    p.done += n;
    if (p.done < p.total) return;
    this.cur = undefined;
    const req = p.req;
    if (req === undefined) {
      // Assembled: matched now, whole, as any eager message (it may wait as unexpected).
      this.parts.matching.deliver(this.peer, p.kept!);
      return;
    }
    const xfer = Math.min(p.total, req.buffer.length);
    const tb = this.parts.ctx.trace;
    if (tb !== undefined && req.traceId !== 0) tb.record(req.traceId, TraceStage.Copied, traceNow());
    if (p.syncId !== 0) this.peer.notify(p.syncId, xfer, MxStatus.SUCCESS);
    this.parts.completion.complete(req, xfer < p.total ? MxStatus.TRUNCATED : MxStatus.SUCCESS, xfer);
  }

  /** The pieces broke the protocol: the receive they were for fails, and so does the peer. */
  fail(what: string): void {
    this.abandon(`peer wrote garbage into the channel: ${what}`, MxStatus.ABORTED);
    this.parts.garbage(what);
  }

  /** The channel ends (`why`, `code`): a receive the pieces were filling fails with it. */
  abandon(why: string, code: number): void {
    const req = this.cur?.req;
    this.cur = undefined;
    if (req === undefined) return;
    req.reason ??= why;
    this.parts.completion.complete(req, code, 0);
  }
}
