/**
 * Inspection of myrback's registry for the host (src/host/inspect.ts): every open endpoint
 * with its owner, registrations, peers and channels, and queue depths read from its window
 * and its channels' lanes. Its own file because it only reads shared words (no NIC request,
 * nothing counted: the data path does not notice) and knows the lane layout, which the rest
 * of myrback never reads.
 */

import {
  EQ_ENTRIES,
  RECV_BYTES,
  SQ_ENTRIES,
  W_EQ_CONS,
  W_EQ_PROD,
  W_RQ_CONS,
  W_RQ_PROD,
  W_SQ_CONS,
  W_SQ_PROD,
} from "../../nic/window.js";
import type { DomId } from "../../xen/abi.js";
import { LANE_BYTES, LANE_HEADER_BYTES, LaneWord, readLaneGroup } from "../channel-abi.js";
import type { ClientKind, EndpointRec } from "./records.js";
import type { LaneShareInfo } from "./share-loop.js";

/** A co-resident channel as one of its members sees it (bytes are the lanes' free-running u32 positions). */
export interface BackendChannelInfo {
  id: number;
  peerEndpoint: number;
  peerDomid: DomId;
  /** Bytes of records this endpoint wrote into its lane (u32, wraps): headers of 48 bytes included. */
  bytesOut: number;
  /** Bytes of records the peer wrote towards this endpoint (u32, wraps). */
  bytesIn: number;
  /** Bytes this endpoint wrote that the peer has not consumed yet. */
  backlogOut: number;
  /** Bytes the peer wrote that this endpoint has not consumed yet. */
  backlogIn: number;
  /** Messages the peer took from this endpoint's lane (u32, wraps; the peer's library counts). */
  msgsOut: number;
  /** Messages this endpoint took from the peer's lane (u32, wraps). */
  msgsIn: number;
  /**
   * While the share loop runs (share-loop.ts): the lane this endpoint reads, as the loop saw
   * it last: its rate (bytes/s, moving average), the share limit written (0: none), whether it
   * contended.
   */
  shareIn?: { rateBytesPerSec: number; limitBytesPerSec: number; contending: boolean };
  /**
   * The writer group of the lane this endpoint reads (its lane policy page): the peer domain's
   * share of this endpoint's reading, one per domain incarnation (a later domain given the same
   * id gets another). Absent for channels without a policy page (native processes').
   */
  groupIn?: number;
}

export interface BackendEndpointInfo {
  endpointId: number;
  /**
   * Which opening of the backend this endpoint is (tells a reopened id from the endpoint before
   * it). Not its session: a session is what a sender must name, and whoever reads this (any
   * holder of the cluster key) could forge another job's messages with it.
   */
  serial: number;
  domid: DomId;
  kind: ClientKind;
  owner: string;
  regions: number;
  registeredBytes: number;
  /** Co-resident endpoints connected through myrback (peers on other hosts connect through the NICs). */
  peers: { endpointId: number; domid: DomId }[];
  channels: BackendChannelInfo[];
  /** Read from the endpoint's window: descriptors the NIC has not taken, events the owner has not read, receive-area bytes in use. */
  queues: {
    sendQueue: number;
    sendQueueSize: number;
    eventQueue: number;
    eventQueueSize: number;
    recvBytes: number;
    recvBytesSize: number;
  };
}

/**
 * A lane's progress, read from its header as channel.ts lays it out (lane s at
 * s × (LANE_HEADER_BYTES + LANE_BYTES); its tail, the bytes written, in word 0; its head, the
 * bytes consumed, in word 32, which the reader publishes every sixteenth of the lane and on its progress
 * loop's sweeps: an active reader's backlog reads a few records high for microseconds). test/toolstack.test.ts checks this against LaneWriter/LaneReader.
 */
export function laneProgress(
  channel: SharedArrayBuffer,
  side: 0 | 1,
): { written: number; backlog: number; messages: number } {
  const ctl = new Int32Array(channel, side * (LANE_HEADER_BYTES + LANE_BYTES), LANE_HEADER_BYTES / 4);
  const tail = Atomics.load(ctl, LaneWord.Tail) >>> 0;
  const head = Atomics.load(ctl, LaneWord.Head) >>> 0;
  return {
    written: tail,
    backlog: (tail - head) >>> 0,
    messages: Atomics.load(ctl, LaneWord.Messages) >>> 0,
  };
}

/** The open endpoints of `endpoints`, described from their records and shared words, by id. */
export function describeEndpoints(
  endpoints: Iterable<EndpointRec>,
  shares: readonly LaneShareInfo[] = [],
): BackendEndpointInfo[] {
  const shareByKey = new Map(shares.map((s) => [s.key, s]));
  const out: BackendEndpointInfo[] = [];
  for (const ep of endpoints) {
    if (ep.closed) continue;
    let regions = 0;
    let registeredBytes = 0;
    for (const r of ep.owner.regions.values())
      if (r.endpointId === ep.id) {
        regions++;
        registeredBytes += r.bytes;
      }
    const w = new Int32Array(ep.window, 0, 128);
    const depth = (prod: number, cons: number) =>
      ((Atomics.load(w, prod) >>> 0) - (Atomics.load(w, cons) >>> 0)) >>> 0;
    const channels: BackendChannelInfo[] = [];
    for (const ch of ep.channels) {
      if (ch.closed) continue;
      const side = ch.members[0] === ep ? 0 : 1;
      const peer = ch.members[1 - side];
      const mine = laneProgress(ch.buffer, side);
      const theirs = laneProgress(ch.buffer, side === 0 ? 1 : 0);
      const sh = shareByKey.get(`${ch.id}:${side}`);
      const page = ch.mem?.policy.get(ep.owner.domid);
      channels.push({
        ...(page && { groupIn: readLaneGroup(page.bytes.buffer as SharedArrayBuffer) }),
        ...(sh && {
          shareIn: {
            rateBytesPerSec: sh.rateBytesPerSec,
            limitBytesPerSec: sh.limitBytesPerSec,
            contending: sh.contending,
          },
        }),
        id: ch.id,
        peerEndpoint: peer.id,
        peerDomid: peer.owner.domid,
        bytesOut: mine.written,
        bytesIn: theirs.written,
        msgsOut: mine.messages,
        msgsIn: theirs.messages,
        backlogOut: mine.backlog,
        backlogIn: theirs.backlog,
      });
    }
    out.push({
      endpointId: ep.id,
      serial: ep.serial,
      domid: ep.owner.domid,
      kind: ep.owner.kind,
      owner: ep.owner.label,
      regions,
      registeredBytes,
      peers: [...ep.peers].filter((p) => !p.closed).map((p) => ({ endpointId: p.id, domid: p.owner.domid })),
      channels,
      queues: {
        sendQueue: depth(W_SQ_PROD, W_SQ_CONS),
        sendQueueSize: SQ_ENTRIES,
        eventQueue: depth(W_EQ_PROD, W_EQ_CONS),
        eventQueueSize: EQ_ENTRIES,
        recvBytes: depth(W_RQ_PROD, W_RQ_CONS),
        recvBytesSize: RECV_BYTES,
      },
    });
  }
  return out.sort((a, b) => a.endpointId - b.endpointId);
}
