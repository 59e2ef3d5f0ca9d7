/**
 * The MX records two libraries exchange, whichever way a peer is reached: on a co-resident
 * channel (a record of channel-abi.ts), as a NIC SEND (nic-records.ts packs the same
 * fields into a descriptor) or as MX-over-Ethernet frames (ether.ts). This file names the
 * types and, for the channel, every protocol word: the sending library writes them all,
 * the receiving one copies them out once (LaneReader.aux) and treats them as hostile.
 *
 *   EAGER   the message inline (CR_LENGTH = payload bytes)
 *   RNDV    no payload (CR_FLAG_NO_PAYLOAD; CR_LENGTH = message length): the data stays in
 *           the sender's registered memory under a pull right armed for this message alone
 *           (nic/window.ts, the exposure table); the receiver's NIC pulls it once matched
 *   NOTIFY  the receiver's answer: it matched a synchronous send, or pulled a rendezvous
 *   PING    NIC only: a liveness probe; its SEND_DONE says whether the peer is still there
 *
 * Protocol words of a channel record (index into its CR_AUX words; word CR_AUX + index):
 *
 *   EAGER, RNDV                            NOTIFY
 *   0 AUX_SYNC_ID    sync id, 0 = none     0 AUX_NOTIFY_SYNC_ID  the send's sync id
 *   1 AUX_SEQ        sender's sequence     1 AUX_NOTIFY_XFER     bytes transferred
 *   2 AUX_XP_INDEX   RNDV: exposure index  2 AUX_NOTIFY_STATUS   MX status
 *   3 AUX_XP_KEY     RNDV: its key
 *   4 AUX_XP_OFFSET  RNDV: offset in it (0)
 *   5 AUX_TRACE_SEQ  the sender's trace sequence (record flag FLAG_TRACED, trace.ts)
 *
 * A sync id names the send waiting for the answer (an issend, or every rendezvous): the
 * receiver answers with NOTIFY carrying it. The sender's sequence numbers each pair's
 * messages, so the receiver matches them in order whichever way each one came.
 */

export const REC_EAGER = 1;
export const REC_RNDV = 2;
export const REC_NOTIFY = 3;
/** NIC only (nic-records.ts): a liveness probe. */
export const REC_PING = 4;
/** The highest type a channel carries (its reader refuses anything above). */
export const REC_MAX_CHANNEL = REC_NOTIFY;

// EAGER and RNDV protocol words.
export const AUX_SYNC_ID = 0;
export const AUX_SEQ = 1;
export const AUX_XP_INDEX = 2;
export const AUX_XP_KEY = 3;
export const AUX_XP_OFFSET = 4;
export const AUX_TRACE_SEQ = 5;

// NOTIFY protocol words.
export const AUX_NOTIFY_SYNC_ID = 0;
export const AUX_NOTIFY_XFER = 1;
export const AUX_NOTIFY_STATUS = 2;
