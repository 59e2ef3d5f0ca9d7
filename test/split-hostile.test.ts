/**
 * The split path as a hostile guest would try it: a guest that drives its netfront itself
 * (test/fixtures/net-agent.ts) and writes MX-over-Ethernet CONNECT frames as it likes, to
 * guess the connect key of a split-path endpoint of another job without netback's wrong-key
 * lockout (src/netback/mx-steer.ts) ever catching up with it.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import { CONNECT_FREE_FAILS } from "../src/nic/connect-throttle.js";
import { MxStatus, mxStatusName } from "../src/nic/status.js";
import type { Domain } from "../src/xen/hypervisor.js";
import {
  MXOE_ETHERTYPE,
  MXOE_MAGIC,
  MXOE_VERSION,
  MxoeType,
  MxoeWord,
  SPLIT_ENDPOINT_BASE,
  SPLIT_ENDPOINTS_PER_DOMAIN,
} from "../src/xen/io/mxoe.js";
import type { FrameSummary } from "./fixtures/net-agent.js";
import { nextMessage } from "./helpers/messages.js";
import { type NetAgent, startNetAgent } from "./helpers/net-agent.js";

const GUESSER = new URL("./fixtures/guests/key-guesser.js", import.meta.url);
const NIC = 41;
const KEY = 0x5ec7e7;
/** Wrong keys each attacker tries: well past CONNECT_FREE_FAILS. */
const GUESSES = 3 * CONNECT_FREE_FAILS;

let host: Host;
let victim: Domain;
let target: { nic: number; endpoint: number };

before(async () => {
  host = await Host.start({ nicId: NIC });
  // A split-path endpoint of another job, opened with KEY, answering CONNECTs in its library.
  victim = await host.startGuest({
    module: GUESSER,
    args: { role: "victim", key: KEY, path: "split" },
    name: "split-victim",
    pages: 2048,
    fastPath: false,
  });
  const [addr] = await nextMessage(victim);
  target = addr as { nic: number; endpoint: number };
});
after(async () => {
  victim?.send("done");
  await victim?.exited;
  await host?.stop();
});

interface Agent extends NetAgent {
  /** The split-path endpoint id that names this domain (the only source netback lets it use). */
  ep: number;
}

async function agent(name: string): Promise<Agent> {
  const a = await startNetAgent(host, name);
  return { ...a, ep: SPLIT_ENDPOINT_BASE + a.dom.domid * SPLIT_ENDPOINTS_PER_DOMAIN };
}

/** An MXoE frame of `type` from `from`'s endpoint to (NIC, dstEp), header words as given. */
function mx(
  from: Agent,
  type: number,
  dstEp: number,
  id: number,
  word: Partial<Record<number, number>> = {},
) {
  const words = new Array<number>(16).fill(0);
  words[MxoeWord.magic] = ((MXOE_MAGIC << 16) | (MXOE_VERSION << 8) | type) >>> 0;
  words[MxoeWord.dstNic] = NIC;
  words[MxoeWord.dstEp] = dstEp;
  words[MxoeWord.srcNic] = NIC;
  words[MxoeWord.srcEp] = from.ep;
  words[MxoeWord.srcSession] = 0x5e55;
  words[MxoeWord.id] = id;
  words[MxoeWord.matchHi] = 1;
  for (const [w, v] of Object.entries(word)) words[Number(w)] = v!;
  return { dst: "ff:ff:ff:ff:ff:ff", len: 128, tag: 0, type: MXOE_ETHERTYPE, words };
}

const connect = (from: Agent, dstEp: number, id: number, key: number) =>
  mx(from, MxoeType.Connect, dstEp, id, { [MxoeWord.offset]: key });

/** The CONNECT_REPLY `a` gets next (the victim's, or netback's own REJECTED): its status name. */
async function reply(a: Agent): Promise<string> {
  const got = await a.call<FrameSummary[]>({ op: "recv", timeoutMs: 10_000, expect: 1 });
  const r = got.find((f) => f.mxoe && (f.mxoe[MxoeWord.magic] & 0xff) === MxoeType.ConnectReply);
  assert.ok(r, `${a.dom.name} got a CONNECT_REPLY (got ${JSON.stringify(got)})`);
  return mxStatusName(r.mxoe![MxoeWord.msgSeq]);
}

/**
 * The victim answered the first CONNECT_FREE_FAILS guesses (`told`, if fewer), then netback
 * refused to pass more.
 */
function assertCaught(statuses: string[], told = CONNECT_FREE_FAILS): void {
  assert.deepEqual(
    statuses.slice(0, told),
    new Array(told).fill("BAD_KEY"),
    "the first wrong keys are told BAD_KEY",
  );
  // (Each lockout doubles from a second; the later guesses go within one.)
  assert.ok(
    statuses.includes("REJECTED"),
    `after ${CONNECT_FREE_FAILS} wrong keys netback locks the guesser out: ${statuses.join(" ")}`,
  );
}

test("a guest that repeats one connect id with a new key each time is counted for every wrong key", async () => {
  const a = await agent("same-id-guesser");
  const t0 = host.netStats().bridge;
  const statuses: string[] = [];
  for (let i = 1; i <= GUESSES; i++) {
    await a.call({ op: "send", frames: [connect(a, target.endpoint, 7, KEY ^ i)] });
    statuses.push(await reply(a));
  }
  assertCaught(statuses);
  assert.ok(host.netStats().bridge.mxThrottled > t0.mxThrottled, "the refused CONNECTs were counted");
  await a.dom.destroy();
});

test("a guest that follows each guess with a decoy CONNECT elsewhere is still counted for its wrong keys", async () => {
  const a = await agent("decoy-guesser");
  // The decoys go to a bystander's endpoint, which never answers them.
  const bystander = await agent("decoy-bystander");
  const statuses: string[] = [];
  for (let i = 1; i <= GUESSES; i++) {
    // One batch: the decoy passes netback before the victim has even seen the guess.
    await a.call({
      op: "send",
      frames: [connect(a, target.endpoint, 100 + i, KEY ^ i), connect(a, bystander.ep, 500 + i, 1)],
    });
    statuses.push(await reply(a));
  }
  // Each unanswered decoy is a guess it has out: with wrong keys on record a guest may have
  // only as many out as it has free ones left, so fewer guesses reach the victim.
  const told = statuses.indexOf("REJECTED");
  assert.ok(told >= 1 && told <= CONNECT_FREE_FAILS, statuses.join(" "));
  assertCaught(statuses, told);
  await Promise.all([a.dom.destroy(), bystander.dom.destroy()]);
});

test("an accomplice's SUCCESS between guesses does not forgive a guest its wrong keys", async () => {
  const a = await agent("forgiven-guesser");
  // Another domain of the attacker's: it answers the attacker's CONNECTs with SUCCESS.
  const accomplice = await agent("accomplice");
  const statuses: string[] = [];
  for (let i = 1; i <= GUESSES; i++) {
    // Before the next wrong key would lock it out (while it is not): a right key, somewhere.
    if (i % (CONNECT_FREE_FAILS - 1) === 1 && i > 1 && !statuses.includes("REJECTED")) {
      await a.call({ op: "send", frames: [connect(a, accomplice.ep, 900 + i, 1)] });
      const asked = await accomplice.call<FrameSummary[]>({ op: "recv", timeoutMs: 10_000, expect: 1 });
      if (asked.length === 0) {
        // netback refused it (a lockout from a guess that came late): the attacker hears so.
        statuses.push(await reply(a));
      } else {
        await accomplice.call({
          op: "send",
          frames: [
            mx(accomplice, MxoeType.ConnectReply, a.ep, 900 + i, {
              [MxoeWord.dstSession]: 0x5e55,
              [MxoeWord.msgSeq]: MxStatus.SUCCESS,
            }),
          ],
        });
        assert.equal(await reply(a), "SUCCESS", "the accomplice's answer reached the attacker");
      }
    }
    await a.call({ op: "send", frames: [connect(a, target.endpoint, 200 + i, KEY ^ i)] });
    statuses.push(await reply(a));
  }
  assertCaught(statuses);
  await Promise.all([a.dom.destroy(), accomplice.dom.destroy()]);
});
