/**
 * The dashboard's sign-in as a stranger on the network uses it, when the dashboard binds beyond
 * the loopback and so asks for the cluster key (127.0.0.2 is not one of the names it treats as
 * "this machine only"):
 *  - a flood of challenges between a user's GET /auth/challenge and their POST /auth: the
 *    server kept the last 64 challenges, the oldest going, so 64 requests from anyone dropped
 *    the user's and every sign-in failed, with "that is not the cluster key" for the right key;
 *  - the refusals say which it is: a wrong key, or a challenge that is unknown, expired or used;
 *  - a proof cannot be replayed, not even once the used challenges remembered overflow.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { randomClusterKey } from "../src/cluster/auth.js";
import { silentLogger } from "../src/cluster/log.js";
import { Dashboard, dashboardProof, MAX_USED_CHALLENGES } from "../src/dashboard/server.js";

const key = randomClusterKey();
let d: Dashboard;
before(async () => {
  d = await Dashboard.start({ host: "127.0.0.2", port: 0, sources: [], key, log: silentLogger });
  assert.equal(d.authRequired, true);
});
after(() => d.stop());

async function challenge(at: Dashboard = d): Promise<string> {
  const r = await fetch(`${at.url}auth/challenge`);
  assert.equal(r.status, 200);
  const { nonce } = (await r.json()) as { nonce: string };
  assert.match(nonce, /^[0-9a-f]{64}$/);
  return nonce;
}

async function signIn(
  nonce: string,
  proof: string,
  at: Dashboard = d,
): Promise<{ status: number; error?: string; cookie?: string }> {
  const r = await fetch(`${at.url}auth`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ nonce, proof }),
  });
  const body = (await r.json()) as { ok?: boolean; error?: string };
  const cookie = /myrixen_session=[0-9a-f]{64}/.exec(r.headers.get("set-cookie") ?? "")?.[0];
  return { status: r.status, error: body.error, cookie };
}

const prove = (nonce: string) => dashboardProof(key.bytes, nonce);

test("a flood of challenges between a user's GET and POST does not refuse the user's sign-in", async () => {
  const nonce = await challenge();
  // The attacker: 500 challenges, in batches of 50 at once (no key needed to ask).
  for (let i = 0; i < 10; i++) await Promise.all(Array.from({ length: 50 }, () => challenge()));
  const r = await signIn(nonce, prove(nonce));
  assert.equal(r.status, 200, r.error);
  assert.ok(r.cookie, "a session cookie");
  const api = await fetch(`${d.url}api/state`, { headers: { cookie: r.cookie } });
  assert.equal(api.status, 200);
});

test("a wrong key is refused as a wrong key, and does not use up the challenge", async () => {
  const nonce = await challenge();
  const wrong = dashboardProof(Buffer.from("d4".repeat(32), "latin1"), nonce);
  const r = await signIn(nonce, wrong);
  assert.equal(r.status, 403);
  assert.match(r.error ?? "", /not the cluster key/);
  assert.doesNotMatch(r.error ?? "", /expired|used already|gave out|get a new one/);
  assert.equal(r.cookie, undefined);
  const right = await signIn(nonce, prove(nonce));
  assert.equal(right.status, 200, right.error);
});

test("a proof cannot be replayed: its challenge is used", async () => {
  const nonce = await challenge();
  const first = await signIn(nonce, prove(nonce));
  assert.equal(first.status, 200, first.error);
  const again = await signIn(nonce, prove(nonce));
  assert.equal(again.status, 403);
  assert.match(again.error ?? "", /the challenge was used already.*get a new one/);
  assert.doesNotMatch(again.error ?? "", /not the cluster key/);
  assert.equal(again.cookie, undefined);
});

test("an unknown or expired challenge is refused as such, not as a wrong key", async () => {
  // A nonce the dashboard never gave out, proved with the right key.
  const forged = randomBytes(32).toString("hex");
  const unknown = await signIn(forged, prove(forged));
  assert.equal(unknown.status, 403);
  assert.match(unknown.error ?? "", /not one this dashboard gave out.*get a new one/);
  assert.doesNotMatch(unknown.error ?? "", /not the cluster key/);

  const short = await Dashboard.start({
    host: "127.0.0.2",
    port: 0,
    sources: [],
    key,
    log: silentLogger,
    challengeMs: 100,
  });
  try {
    // Another dashboard's challenge (as one from before a restart) is unknown here.
    const other = await challenge();
    const r = await signIn(other, prove(other), short);
    assert.equal(r.status, 403);
    assert.match(r.error ?? "", /not one this dashboard gave out/);

    const nonce = await challenge(short);
    await sleep(300);
    const expired = await signIn(nonce, prove(nonce), short);
    assert.equal(expired.status, 403);
    assert.match(expired.error ?? "", /the challenge expired.*get a new one/);
    assert.doesNotMatch(expired.error ?? "", /not the cluster key/);
    assert.equal(expired.cookie, undefined);
    const fresh = await challenge(short);
    const ok = await signIn(fresh, prove(fresh), short);
    assert.equal(ok.status, 200, ok.error);
  } finally {
    await short.stop();
  }
});

test("past the used challenges remembered, an old proof is still not replayable", async () => {
  const first = await challenge();
  assert.equal((await signIn(first, prove(first))).status, 200);
  let last = "";
  for (let i = 0; i < MAX_USED_CHALLENGES; i++) {
    last = await challenge();
    const r = await signIn(last, prove(last));
    assert.equal(r.status, 200, r.error);
  }
  // The first was forgotten to bound the set: challenges as old are refused as expired.
  const again = await signIn(first, prove(first));
  assert.equal(again.status, 403);
  assert.match(again.error ?? "", /the challenge expired/);
  const lastAgain = await signIn(last, prove(last));
  assert.equal(lastAgain.status, 403);
  assert.match(lastAgain.error ?? "", /used already/);
  // A fresh challenge still signs in.
  const fresh = await challenge();
  assert.equal((await signIn(fresh, prove(fresh))).status, 200);
});
