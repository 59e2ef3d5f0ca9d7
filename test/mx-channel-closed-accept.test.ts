/**
 * A channel its connector closed after myrback handed it over, before the receiving library
 * took the CONNECT event (mx_connect, sends, mx_disconnect, all while the receiver was busy):
 * what the connector wrote is read, then the connector is failed — each of those sends was
 * MX_STATUS_SUCCESS to it. Dropped unread (what was Channels.dropIfClosed), they were lost: seen in a
 * fast connect/send/disconnect loop while the receiver was held by its caps (2026-12-07).
 * Likewise a record through the NIC from the peer's next incarnation, when the DISCONNECT
 * of the old one never came. Real Channels, ChannelPath, NicRecords and PartnerTable; a fake
 * driver hands the channel over.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Channels } from "../src/mx/channel-path.js";
import { NicRecords } from "../src/mx/nic-path.js";
import { nicRecordAux0 } from "../src/mx/nic-records.js";
import { RecordType } from "../src/mx/records.js";
import { MxRequest, RequestState } from "../src/mx/types.js";
import { CHANNEL_BYTES, closeChannelLanes } from "../src/myrixen/channel-abi.js";
import { DRIVER_EVENT_CONNECT, DRIVER_EVENT_DISCONNECT, type MxDriver } from "../src/myrixen/driver-abi.js";
import {
  E_AUX0,
  E_AUX1,
  E_LENGTH,
  E_MATCH_HI,
  E_MATCH_LO,
  E_RECV_OFFSET,
  E_SRC_ENDPOINT,
  E_SRC_NIC,
  E_SRC_SESSION,
  E_TRACE_SEQ,
  EQ_OFFSET,
  RECV_OFFSET,
} from "../src/nic/window.js";
import { channelEnd, parts, postRecv } from "./helpers/mx-parts.js";

/** The driver hands `channel` over (side 1) as endpoint 5 of NIC 0, session 555's, when the rank accepts. */
function offer(rank: ReturnType<typeof parts>, channel: SharedArrayBuffer): void {
  (rank.driver as unknown as { acceptChannel: MxDriver["acceptChannel"] }).acceptChannel = (_ep, id) => ({
    channelId: id,
    channel,
    side: 1,
    peerIntr: new SharedArrayBuffer(4096),
    peerNic: 0,
    peerEndpoint: 5,
    peerSession: 555,
  });
}

/** The connector writes `n` numbered 8-byte eager messages (match 7) into side 0's lane. */
function sendNumbered(channel: SharedArrayBuffer, n: number): MxRequest[] {
  const sender = channelEnd(channel, 0);
  return Array.from({ length: n }, (_, i) => {
    const buf = new Uint8Array(8);
    new DataView(buf.buffer).setUint32(0, i, true);
    const req = new MxRequest("send", buf, undefined);
    req.peer = sender.partner;
    req.matchLo = 7;
    req.msgLength = 8;
    assert.ok(sender.path.trySend(req));
    return req;
  });
}

/** The numbers the receives that completed got, in their order. */
function numbers(recvs: MxRequest[]): number[] {
  return recvs
    .filter((r) => r.state === RequestState.Done)
    .map((r) => new DataView(r.buffer.buffer, r.buffer.byteOffset).getUint32(0, true));
}

test("a channel its connector closed before the receiver took its CONNECT is read: every message the connector saw complete arrives, in order", () => {
  const rank = parts();
  const channels = new Channels(rank);
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  offer(rank, channel);
  const recvs = Array.from({ length: 10 }, () => postRecv({ p: rank } as never, new Uint8Array(8), 7));
  // The connector: writes 10 eager messages (each complete once in the lane), disconnects.
  for (const req of sendNumbered(channel, 10))
    assert.equal(req.state, RequestState.Done, "complete for the connector");
  closeChannelLanes(channel);
  // Only now does the receiver look at its events.
  channels.onDriverEvent(DRIVER_EVENT_CONNECT, 1, 0, 5, 555);
  channels.onDriverEvent(DRIVER_EVENT_DISCONNECT, 1, 0, 5, 555);
  assert.deepEqual(numbers(recvs), [...Array(10).keys()], "all ten, in order");
  const peer = rank.partners.get(0, 5);
  assert.ok(peer?.dead !== undefined, "and the connector is failed: it went away");
  assert.equal(peer?.channel, undefined, "its channel released");
});

test("a record from the peer's next incarnation, its DISCONNECT never delivered, takes what the old one left in the channel first", () => {
  // myrback writes no DISCONNECT to a queue with no room for it (driver-abi.ts): the first word
  // of the reopened endpoint is then a record through the NIC. It failed the old partner
  // without reading its lane, and the eager sends the old incarnation saw complete were lost.
  const rank = parts();
  const channels = new Channels(rank);
  const records = new NicRecords(rank);
  const channel = new SharedArrayBuffer(CHANNEL_BYTES);
  offer(rank, channel);
  channels.onDriverEvent(DRIVER_EVENT_CONNECT, 1, 0, 5, 555);
  const recvs = Array.from({ length: 4 }, () => postRecv({ p: rank } as never, new Uint8Array(8), 7));
  sendNumbered(channel, 3);
  // The old incarnation closes; its channel's lanes close, and no DISCONNECT comes.
  closeChannelLanes(channel);
  // The new incarnation's first message through the NIC: 8 bytes, number 3.
  const w = rank.nic.window;
  const base = EQ_OFFSET / 4;
  w[base + E_LENGTH] = 8;
  w[base + E_RECV_OFFSET] = 0;
  w[base + E_SRC_NIC] = 0;
  w[base + E_SRC_ENDPOINT] = 5;
  w[base + E_SRC_SESSION] = 556;
  w[base + E_MATCH_HI] = 0;
  w[base + E_MATCH_LO] = 7;
  w[base + E_AUX0] = nicRecordAux0(RecordType.Eager, 0, 0);
  w[base + E_AUX1] = 0;
  w[base + E_TRACE_SEQ] = 0;
  new DataView(rank.nic.windowBytes.buffer, RECV_OFFSET).setUint32(0, 3, true);
  records.onRecv(base);
  assert.deepEqual(numbers(recvs), [0, 1, 2, 3], "the old incarnation's three, then the new one's");
  assert.equal(rank.partners.get(0, 5)?.session, 556);
});
