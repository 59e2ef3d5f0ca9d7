/**
 * A member handed a channel (a connect's answer) maps it a moment later: its library does
 * both in one call, but its thread may be preempted between them. Meanwhile its peer connected
 * back (it has the same channel), sent, disconnected and connected again: myrback closed the
 * channel, and since no one mapped its memory any more, gave it, zeroed, to the pair's next
 * channel. The late member then mapped that one as its own, and what its peer had sent was
 * lost, each send MX_STATUS_SUCCESS to it (seen as whole rounds lost in a connect/send/
 * disconnect loop). Now the memory waits until each member handed the channel has said it
 * mapped it (its lane policy page's Attached word), or is gone.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { nextMessage, request } from "./helpers/messages.js";
import { connectTo, SCRIPT_KEY, scriptedGuest } from "./helpers/mx-script.js";

const LATE = new URL("./fixtures/guests/late-map.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 15, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

test("a channel's memory serves the pair's next channel only once the member handed it has mapped it", async () => {
  const late = await host.startGuest({ module: LATE, name: "late", pages: 512 });
  const [lateAddr] = (await nextMessage(late)) as [{ nic: number; endpoint: number }];
  const peer = await scriptedGuest(host, "peer");
  // The late member connects: myrback makes the channel and answers; nothing is mapped yet.
  const { channelId } = await request<{ channelId: number }>(late, {
    op: "connect",
    nic: peer.addr.nic,
    endpoint: peer.addr.endpoint,
    key: SCRIPT_KEY,
  });
  assert.ok(channelId > 0, "a channel");
  // Its peer connects back (the same channel), sends four, disconnects and connects again.
  const lateGuest = { d: late, addr: lateAddr, do: () => Promise.resolve() };
  await connectTo(peer, lateGuest as never, "late");
  const sent = await peer.do({ op: "send", to: "late", vals: [1, 2, 3, 4], tag: 7, wait: true });
  assert.deepEqual(
    sent.codes.map((c: { code: string }) => c.code),
    Array(4).fill("MX_STATUS_SUCCESS"),
  );
  await peer.do({ op: "disconnect", as: "late" });
  await connectTo(peer, lateGuest as never, "late");
  // Now the late member maps the channel it was handed: the four are there.
  const seen = await request<{ records: number; closed: boolean }>(late, { op: "map" });
  assert.deepEqual(seen, { records: 4, closed: true }, "its own channel, with what its peer sent");
  for (const d of [late, peer.d]) {
    d.send({ op: "exit" });
    assert.equal((await d.exited).state, "shutdown");
  }
});
