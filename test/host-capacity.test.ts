/**
 * A host's capacity against a launcher that asks for more than the host has: a real HostDaemon
 * (client-jobs.ts, capacity.ts) and real launchers (RemoteHost) over TCP. Before, a host took
 * whatever a start asked, so one key holder (or a buggy script) could start thousands of ranks,
 * or ranks of 4 GiB each, on a host of 2 slots — 54 domains and 9 GiB of guest RAM committed
 * in one PoC — taking the machine from every other tenant. Now all jobs together are bounded by
 * the host's --max-ranks and --max-guest-mb, counted over every connection; a start past either
 * is refused whole, before any domain is made, naming the limit; what a job held comes back.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { randomClusterKey } from "../src/cluster/auth.js";
import { DEFAULT_RANKS_PER_SLOT, defaultMaxGuestMb, HostCapacity } from "../src/cluster/capacity.js";
import { Job, newJobKey } from "../src/cluster/job.js";
import type { RankEvents } from "../src/cluster/ranks.js";
import { RemoteHost } from "../src/cluster/remote.js";
import { startLocalDaemon } from "./helpers/daemon.js";
import { until } from "./helpers/until.js";

const key = randomClusterKey();
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}.js`, import.meta.url));

/** A start of `n` ranks (ranks 0..n-1 of a job of n) of a rank that prints and then hangs. */
function ask(rh: RemoteHost, job: string, n: number, pages: number | undefined, lines: string[] = []) {
  const events: RankEvents = {
    output: (_r, _s, l) => lines.push(l),
    addr() {},
    file() {},
    exit() {},
  };
  return rh.start(
    {
      job,
      size: n,
      path: "bypass",
      program: fixture("mh-hang"),
      argv: [],
      ranks: [...Array(n).keys()],
      key: newJobKey(),
      pages,
    },
    events,
  ).started;
}

test("a launcher asking for more than the host's capacity is refused before any domain is made, naming the limit; an honest job still runs", async () => {
  // 1 slot: at most 4 ranks at once (the default, 4 per slot); 256 MiB of guest RAM (4 ranks of the default 64 MiB).
  const d = await startLocalDaemon(key, { slots: 1, maxGuestMb: 256 });
  const at = { host: "127.0.0.1", port: d.control.port };
  // Every domain the host makes, refused starts or not.
  const hv = d.host.hypervisor;
  const create = hv.createDomain.bind(hv);
  let made = 0;
  hv.createDomain = (c) => {
    made++;
    return create(c);
  };
  const a = await RemoteHost.connect(at, { key, name: "attacker 1" });
  const b = await RemoteHost.connect(at, { key, name: "attacker 2" });
  try {
    // One request for more ranks than the host ever runs at once.
    await assert.rejects(
      ask(a, "many", 9, undefined),
      (e: Error) => {
        assert.match(
          e.message,
          /^refused by the host's limit on ranks running at once: 4 \(myrixen host --max-ranks N; default 4 per slot\); 0 run here now and this job asks 9 more: it can never fit/,
        );
        return true;
      },
      "the host started 9 ranks on 1 slot (more than any limit would let one start take)",
    );
    // One rank of more guest RAM than the host commits to all of them.
    await assert.rejects(
      ask(a, "huge", 1, 131072),
      (e: Error) => {
        assert.match(
          e.message,
          /^refused by the host's limit on guest memory committed to running ranks: 256 MiB \(myrixen host --max-guest-mb N; default half of its RAM\); 0 MiB is committed now and this job asks 512 MiB more \(1 rank × 512 MiB, --pages 131072\)/,
        );
        return true;
      },
      "the host started a rank of 512 MiB past its 256 MiB of guest RAM",
    );
    assert.equal(made, 0, "a refused start made no domain");
    assert.equal(d.capacity.maxRanks, DEFAULT_RANKS_PER_SLOT);
    assert.deepEqual(d.capacity.used, { ranks: 0, guestMb: 0 });

    // Within capacity: 3 ranks of 64 MiB run (and hang).
    const hanging: string[] = [];
    await ask(a, "held", 3, undefined, hanging);
    await until(() => hanging.length === 3, "the held ranks to be up");
    assert.deepEqual(d.capacity.used, { ranks: 3, guestMb: 192 });
    // Another connection (the same key holder, or another tenant) finds what is left, no more.
    await assert.rejects(ask(b, "more", 2, undefined), {
      message:
        /^refused by the host's limit on ranks running at once: 4 .*; 3 run here now and this job asks 2 more: wait for jobs to end, or raise --max-ranks$/,
    });
    await assert.rejects(ask(b, "bigger", 1, 32768), {
      message:
        /^refused by the host's limit on guest memory committed to running ranks: 256 MiB .*; 192 MiB is committed now and this job asks 128 MiB more \(1 rank × 128 MiB, --pages 32768\): wait for jobs to end/,
    });
    assert.equal(made, 3, "only the admitted job's domains were made");

    // An honest job (one rank of the default size) still fits and runs.
    const honest = await RemoteHost.connect(at, { key, name: "honest" });
    try {
      const lines: string[] = [];
      const res = await new Job(honest, {
        n: 1,
        path: "bypass",
        program: fixture("mh-hello"),
        output: (_r, _s, line) => lines.push(line),
      }).run();
      assert.equal(res.exitCode, 0, lines.join("\n"));
      assert.ok(
        lines.some((l) => /^hello rank 0 size 1/.test(l)),
        lines.join("\n"),
      );
    } finally {
      honest.close();
    }
    // Its rank's share came back when it exited; the held ranks' when their launcher goes.
    await until(() => d.capacity.used.ranks === 3, "the honest rank's share to come back");
    a.close();
    await until(() => d.capacity.used.ranks === 0, "the held ranks' shares to come back");
    assert.deepEqual(d.capacity.used, { ranks: 0, guestMb: 0 });
    // Now the other connection's 2 ranks fit.
    const up: string[] = [];
    await ask(b, "more-later", 2, undefined, up);
    await until(() => up.length === 2, "the later ranks to be up");
  } finally {
    a.close();
    b.close();
    await d.stop();
  }
});

test("capacity: the defaults (4 ranks per slot, half the RAM) and the accounting of releases", () => {
  assert.equal(defaultMaxGuestMb(24 * 2 ** 30), 12 * 1024);
  const c = new HostCapacity(4, 256);
  const r = c.reserve([0, 1, 2], 16384);
  assert.ok(typeof r !== "string");
  assert.deepEqual(c.used, { ranks: 3, guestMb: 192 });
  r.releaseRank(1);
  r.releaseRank(1);
  assert.deepEqual(c.used, { ranks: 2, guestMb: 128 }, "a rank's exit counts once");
  r.releaseAll();
  r.releaseAll();
  assert.deepEqual(c.used, { ranks: 0, guestMb: 0 });
  assert.match(String(c.reserve([0, 1, 2, 3, 4], 1)), /--max-ranks/);
  assert.match(String(c.reserve([0], 65537)), /--max-guest-mb/);
  assert.deepEqual(c.used, { ranks: 0, guestMb: 0 }, "a refusal takes nothing");
});
