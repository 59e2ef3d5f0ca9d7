/**
 * A link's share by weight (src/nic/remote-pull.ts serveJobs, issue 16): when the link, not
 * the NIC's poll round, is what limits the pull replies a NIC serves, the sources whose data
 * it carries still share it by their weights. The NIC runs in this thread (control() and
 * poll()); its link is a narrow one that takes a fixed number of frames per turn and pushes
 * back after them (counted, never timed); the peer's PULL_REQUESTs are frames fed to the NIC.
 * And a link that says it would refuse pull data is asked before a payload is copied.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { OpenEndpointReply, RegisterRegionReply } from "../src/nic/control.js";
import {
  beginFrame,
  checkFrame,
  F_LENGTH,
  F_PULL_KEY,
  F_PULL_LENGTH,
  F_PULL_OFFSET,
  F_PULL_RIGHT,
  F_SRC_ENDPOINT,
  FRAME_HEADER_BYTES,
  FrameType,
  getWord,
  setFrameDest,
  setFrameSource,
  setWord,
} from "../src/nic/frame.js";
import type { Link } from "../src/nic/link.js";
import { Nic } from "../src/nic/nic.js";
import { DEFAULT_QOS } from "../src/nic/qos.js";
import {
  Access,
  ANY_ENDPOINT,
  EXPOSURE_OFFSET,
  EXPOSURE_WORDS,
  ExposureState,
  X_KEY,
  X_LENGTH,
  X_OFFSET,
  X_REGION,
  X_STATE,
} from "../src/nic/window.js";

const NIC_ID = 5;
const PEER = 9;
const MIB = 1 << 20;

/** A link that takes `perTurn` frames, then pushes back until the test opens the next turn. */
class NarrowLink implements Link {
  readonly peerNic = PEER;
  private left = 0;
  frameCb: ((f: Uint8Array) => void) | null = null;
  /** Pull-reply payload bytes carried, per source endpoint. */
  readonly bytes = new Map<number, number>();
  replies = 0;

  constructor(private readonly perTurn: number) {}

  turn(): void {
    this.left = this.perTurn;
  }
  send(frame: Uint8Array): boolean {
    if (checkFrame(frame) !== FrameType.PullReply) return true;
    if (this.left === 0) return false;
    this.left--;
    this.replies++;
    const src = getWord(frame, F_SRC_ENDPOINT);
    this.bytes.set(src, (this.bytes.get(src) ?? 0) + getWord(frame, F_LENGTH));
    return true;
  }
  onFrame(cb: (f: Uint8Array) => void): void {
    this.frameCb = cb;
  }
  close(): void {}
}

class Source {
  readonly w: Int32Array;
  readonly region: RegisterRegionReply;
  readonly memory = new SharedArrayBuffer(4 * MIB);
  private nextIndex = 0;
  private key = 7;
  constructor(
    readonly nic: Nic,
    readonly ep: OpenEndpointReply,
  ) {
    this.w = new Int32Array(ep.window);
    this.region = nic.control({
      op: "register_region",
      endpointId: ep.endpointId,
      memory: this.memory,
      runs: [{ offset: 0, length: 4 * MIB }],
      access: Access.LocalRead | Access.RemoteRead,
    }) as RegisterRegionReply;
  }
  static open(nic: Nic, owner: string): Source {
    return new Source(
      nic,
      nic.control({ op: "open_endpoint", owner, endpointId: ANY_ENDPOINT, key: 1 }) as OpenEndpointReply,
    );
  }
  /** Arms a fresh pull right for the whole region (window.ts's order) and asks for it as the peer would. */
  request(link: NarrowLink, id: number): void {
    const index = this.nextIndex++ % 64;
    const b = EXPOSURE_OFFSET / 4 + index * EXPOSURE_WORDS;
    const key = ++this.key;
    Atomics.store(this.w, b + X_STATE, ExposureState.Free);
    Atomics.store(this.w, b + X_REGION, this.region.regionId);
    Atomics.store(this.w, b + X_OFFSET, 0);
    Atomics.store(this.w, b + X_LENGTH, 4 * MIB);
    Atomics.store(this.w, b + X_KEY, key);
    Atomics.store(this.w, b + X_STATE, ExposureState.Armed);
    const f = new Uint8Array(FRAME_HEADER_BYTES);
    beginFrame(f, FrameType.PullRequest, 0, id);
    setFrameSource(f, PEER, 0, 1);
    setFrameDest(f, NIC_ID, this.ep.endpointId, this.ep.session);
    setWord(f, F_PULL_RIGHT, index);
    setWord(f, F_PULL_KEY, key);
    setWord(f, F_PULL_OFFSET, 0);
    setWord(f, F_PULL_LENGTH, 4 * MIB);
    link.frameCb?.(f);
  }
}

/** Runs `turns` link turns with A (weight wa) and E (weight we) always backlogged; returns [A, E] bytes. */
function share(wa: number, we: number, turns: number, perTurn: number): [number, number] {
  const nic = new Nic({ nicId: NIC_ID, maxEndpoints: 4 });
  const a = Source.open(nic, "a");
  const e = Source.open(nic, "e");
  nic.control({ op: "set_qos", endpointId: a.ep.endpointId, settings: { ...DEFAULT_QOS, weight: wa } });
  nic.control({ op: "set_qos", endpointId: e.ep.endpointId, settings: { ...DEFAULT_QOS, weight: we } });
  const link = new NarrowLink(perTurn);
  nic.attachLink(link);
  let id = 1;
  // Each keeps 4 transfers of 4 MiB waiting: more than the turns below take.
  for (let k = 0; k < 4; k++) {
    a.request(link, id++);
    e.request(link, id++);
  }
  for (let t = 0; t < turns; t++) {
    link.turn();
    nic.poll();
    assert.ok(link.replies <= (t + 1) * perTurn);
  }
  const got = (s: Source) => link.bytes.get(s.ep.endpointId) ?? 0;
  return [got(a), got(e)];
}

test("a link that pushes back is shared by the sources' weights, 3:1 and 1:1, not by turns", () => {
  // 2 frames (128 KiB) a turn: far less than a poll round's share, so the link decides.
  const [a, e] = share(3, 1, 96, 2);
  assert.ok(a + e >= 96 * 2 * 60_000, `the link was kept busy: ${a + e} bytes`);
  assert.ok(Math.abs(a / e / 3 - 1) < 0.1, `3:1 → ${a} : ${e}`);
  const [x, y] = share(1, 1, 96, 2);
  assert.ok(Math.abs(x / y - 1) < 0.1, `1:1 → ${x} : ${y}`);
  // One frame a turn: a share still holds at the finest grain the link allows.
  const [p, q] = share(1, 3, 128, 1);
  assert.ok(Math.abs(q / p / 3 - 1) < 0.1, `1:3 → ${p} : ${q}`);
});

/** A NarrowLink that says when it would refuse pull data (Link.takesPullData), and checks every payload byte. */
class AskedLink extends NarrowLink {
  /** Frames with pull data that send() refused: each cost the NIC a payload copied for nothing. */
  refusedWithData = 0;
  asked = 0;
  /** Payload bytes that differ from the source's pattern. */
  wrongBytes = 0;
  private narrowLeft = 0;

  override turn(): void {
    super.turn();
    this.narrowLeft = 2;
  }
  takesPullData(): boolean {
    this.asked++;
    return this.narrowLeft > 0;
  }
  override send(frame: Uint8Array): boolean {
    const data = checkFrame(frame) === FrameType.PullReply && getWord(frame, F_LENGTH) > 0;
    if (!super.send(frame)) {
      if (data) this.refusedWithData++;
      return false;
    }
    if (data) {
      this.narrowLeft--;
      const off = getWord(frame, F_PULL_OFFSET);
      for (let i = 0; i < getWord(frame, F_LENGTH); i += 4093)
        if (frame[FRAME_HEADER_BYTES + i] !== ((off + i) * 7) % 251) this.wrongBytes++;
    }
    return true;
  }
}

test("a NIC asks a link that pushes back before it copies pull data, and sends the right bytes after", () => {
  const nic = new Nic({ nicId: NIC_ID, maxEndpoints: 4 });
  const a = Source.open(nic, "a");
  const mem = new Uint8Array(a.memory);
  for (let i = 0; i < mem.length; i++) mem[i] = (i * 7) % 251;
  const link = new AskedLink(2);
  nic.attachLink(link);
  a.request(link, 1);
  for (let t = 0; t < 40; t++) {
    link.turn();
    nic.poll();
    // Between turns the link takes nothing: the NIC keeps polling and must not build frames.
    for (let k = 0; k < 3; k++) nic.poll();
  }
  assert.equal(link.refusedWithData, 0, "no payload was copied into a frame the link refused");
  assert.ok(link.asked > 0, "the NIC asked the link");
  // 4 MiB in 64 KiB frames, two a turn: all of it by the 32nd of the 40 turns.
  assert.equal(link.bytes.get(a.ep.endpointId), 4 * MIB);
  assert.equal(link.replies, 64);
  assert.equal(link.wrongBytes, 0);
});
