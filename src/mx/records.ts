/**
 * The MX records two libraries exchange, whichever way a peer is reached: on a co-resident
 * channel (a record of channel-abi.ts), as a NIC SEND (nic-records.ts packs the same
 * fields into a descriptor) or as MX-over-Ethernet frames (ether.ts). This file names the
 * types and, for the channel, every protocol word: the sending library writes them all,
 * the receiving one copies them out once (LaneReader.aux) and treats them as hostile.
 *
 *   EAGER   the message inline (RecordWord.Length = payload bytes)
 *   RNDV    no payload (RecordFlag.NoPayload; Length = the message length): the data stays in
 *           the sender's registered memory under a pull right armed for this message alone
 *           (nic/window.ts, the exposure table); the receiver's NIC pulls it once matched
 *   NOTIFY  the receiver's answer: it matched a synchronous send, or pulled a rendezvous
 *   PING    NIC only: a liveness probe; its SEND_DONE says whether the peer is still there
 *   CTS     channel only: the receiver matched a RNDV and wants its first Length bytes
 *           pushed through the channel (the pipelined copy: no NIC, no registration)
 *   FRAG    channel only: Length bytes of a pushed rendezvous, at an offset, inline; with
 *           transfer id 0, the next piece of the eager message in pieces just before it
 *
 * Protocol words of a channel record (index into its aux words; word RecordWord.Aux + index):
 *
 *   EAGER, RNDV (MsgAux)                      NOTIFY (NotifyAux)
 *   0 SyncId    sync id, 0 = none             0 SyncId  the send's sync id
 *   1 Seq       sender's sequence             1 Xfer    bytes transferred
 *   2 XpIndex   RNDV: exposure index;         2 Status  MX status
 *               EAGER in pieces: the message length (MsgAux.Total)
 *   3 XpKey     RNDV: its key
 *   4 XpOffset  RNDV: offset in it (0)
 *   5 TraceSeq  the sender's trace sequence (record flag FLAG_TRACED, trace.ts)
 *
 *   CTS (CtsAux)                              FRAG (FragAux)
 *   0 SyncId    the RNDV's sync id            0 Xfer    the transfer id its CTS named
 *   1 Xfer      receiver's transfer id        1 Offset  where the payload goes in the message
 *   2 Length    bytes wanted (≤ the message)
 *
 * A rendezvous between co-resident peers (flag FLAG_PUSH) is pushed, not pulled (Open MPI sm's copy-in/copy-out):
 * the sender writes FRAGs (channelFragment: 16 KiB, 64 KiB past the first 64 KiB), in order, while its lane has
 * room; the receiver copies each out as it comes, so both copies run at once. The sender's
 * send completes once the last FRAG is in the lane; the receiver checks every FRAG against the
 * transfer it opened (id, offset, length) and fails that message on anything else.
 *
 * An EAGER message above CHANNEL_EAGER_PIECE goes in pieces (flag FLAG_PIECES): the EAGER
 * record holds the first piece and the message length (MsgAux.Total), FRAGs with transfer id
 * 0 carry the rest, in order, right behind it — the sender writes them all at once, having
 * checked that the lane has room for all, and nothing else between them. The receiver copies
 * each piece out as it lands (into the receive it matched, or into a buffer of its own, the
 * whole message then matched as one), so the two copies overlap without a CTS round trip.
 *
 * A sync id names the send waiting for the answer (an issend, or every rendezvous): the
 * receiver answers with NOTIFY carrying it. The sender's sequence numbers each pair's
 * messages, so the receiver matches them in order whichever way each one came. (Const
 * enums, as in channel-abi.ts: tsc writes each name as its number.)
 */

// biome-ignore lint/suspicious/noConstEnum: inlined by tsc (channel-abi.ts says why)
export const enum RecordType {
  Eager = 1,
  Rndv = 2,
  Notify = 3,
  /** NIC only (nic-records.ts): a liveness probe. */
  Ping = 4,
  /** Channel only: push the rendezvous (CtsAux). */
  Cts = 5,
  /** Channel only: a piece of a pushed rendezvous (FragAux). */
  Frag = 6,
}

/** The highest type a channel carries (its reader refuses anything above; PING is refused by the path). */
export const MAX_CHANNEL_RECORD = RecordType.Frag;

/** The most payload one FRAG carries: small enough that the reader's copy overlaps the writer's. */
export const CHANNEL_FRAGMENT = 16 * 1024;
/**
 * FRAGs past a transfer's first CHANNEL_FRAGMENT_SMALL_BYTES carry up to this much: by then
 * both copies run, and a record's fixed cost (header, views, commit, check) counts more than
 * the overlap a smaller piece would add (an 8 MiB exchange went through the lane ~25% faster
 * in 64 KiB pieces than in 16 KiB ones). Messages up to 64 KiB keep the small pieces.
 */
export const CHANNEL_FRAGMENT_LARGE = 64 * 1024;
export const CHANNEL_FRAGMENT_SMALL_BYTES = 64 * 1024;

/** The payload of the FRAG that starts `done` bytes into a pushed transfer (at most; less at its end). */
export function channelFragment(done: number): number {
  return done < CHANNEL_FRAGMENT_SMALL_BYTES ? CHANNEL_FRAGMENT : CHANNEL_FRAGMENT_LARGE;
}

/**
 * Eager up to this many bytes to a co-resident peer (with the default threshold): one
 * hand-off to the receiver instead of three (RNDV, CTS, FRAGs), which is what a collective's
 * mid-size exchange waits on when a rank sleeps (NAS CG class A gathers 56,000-byte blocks).
 * Up to 64 KiB, OSU's and MPI's usual mid size: a lone 64 KiB message measured faster eager
 * than pushed (`bench pingpong --sizes 64K`, three rounds alternating: 29–62 µs against
 * 73–93 µs one way), the push's three hand-offs costing more than the overlap of its copies
 * saves. A message the lane has no room for now waits for it in order, as a smaller eager
 * one does (a window of them streams at 11 GB/s; handed to the NIC they went at 1.5). Every
 * path carries eager messages this long (the NIC's SEND_MAX, MX over Ethernet's limit), so
 * one still waiting when the endpoint changes paths leaves by the new one. Above it, pushed.
 */
export const CHANNEL_EAGER_BYTES = 64 * 1024;

/**
 * Pushed rendezvous one peer may have under way at once; a rendezvous sent beyond that is
 * pulled by the NIC (one copy, by a third thread). A lone message (a ping-pong, a collective's
 * exchange) is pushed: no NIC wake-up. A stream keeps the NIC's one-copy DMA, which measured
 * faster than two copies by the pair when many messages are in flight (bench stream).
 */
export const CHANNEL_PUSHES_IN_FLIGHT = 1;

/** Record flag (library bits, next to trace.ts's FLAG_TRACED = 2): a RNDV to push on CTS, not to pull. */
export const FLAG_PUSH = 4;
/** Record flag: an EAGER whose message comes in pieces (FRAGs with transfer id 0 follow it). */
export const FLAG_PIECES = 8;
/**
 * An eager message to a co-resident peer above this many bytes goes in pieces of this size,
 * so the receiver copies one piece out while the sender copies the next in (two bare threads
 * through a ring: 64 KiB one way 6.8 µs in 16 KiB pieces, 8.5 µs whole, on this machine).
 */
export const CHANNEL_EAGER_PIECE = 16 * 1024;
/** The transfer id of the FRAGs that carry an eager message's pieces (a CTS never names 0). */
export const PIECES_XFER = 0;

// biome-ignore lint/suspicious/noConstEnum: inlined by tsc (channel-abi.ts says why)
export const enum MsgAux {
  SyncId = 0,
  Seq = 1,
  XpIndex = 2,
  /** EAGER with FLAG_PIECES: the message's length (the record holds its first piece). */
  // biome-ignore lint/suspicious/noDuplicateEnumValues: an EAGER has no exposure index; the word carries its length
  Total = 2,
  XpKey = 3,
  XpOffset = 4,
  TraceSeq = 5,
}

// biome-ignore lint/suspicious/noConstEnum: inlined by tsc (channel-abi.ts says why)
export const enum NotifyAux {
  SyncId = 0,
  Xfer = 1,
  Status = 2,
}

// biome-ignore lint/suspicious/noConstEnum: inlined by tsc (channel-abi.ts says why)
export const enum CtsAux {
  SyncId = 0,
  Xfer = 1,
  Length = 2,
}

// biome-ignore lint/suspicious/noConstEnum: inlined by tsc (channel-abi.ts says why)
export const enum FragAux {
  Xfer = 0,
  Offset = 1,
}
