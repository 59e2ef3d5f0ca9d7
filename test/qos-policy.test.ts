/**
 * QoS policy on the control path (issue 16): validation errors that name the field, the
 * policy reaching the NIC at open time and on change through dom0's XenStore node, a guest
 * that cannot write its own node, and the host config's and `myrixen run --qos`'s errors.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ConfigError, loadHostConfig, resolveHostSettings } from "../src/cluster/config.js";
import { Host } from "../src/host/host.js";
import { QosPolicyError, qosSettings } from "../src/myrixen/qos-policy.js";
import { parseQosFlag, parseQosPolicy } from "../src/myrixen/qos-schema.js";
import type { QosSettings } from "../src/nic/qos.js";
import { myrixen } from "./helpers/hosts.js";

const QOS_GUEST = new URL("./fixtures/guests/qos-guest.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 9, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

test("invalid policies are refused with a message naming the field", () => {
  const refused = (v: unknown, field: RegExp) =>
    assert.throws(
      () => parseQosPolicy(v),
      (e: Error) => e instanceof QosPolicyError && field.test(e.message),
    );
  refused({ weight: 0 }, /^qos\.weight: expected a whole number in 1\.\.1000/);
  refused({ weight: 2.5 }, /^qos\.weight:/);
  refused({ tx: { bytesPerSec: -1 } }, /^qos\.tx\.bytesPerSec: .*> 0/);
  refused({ rx: { msgsPerSec: "fast" } }, /^qos\.rx\.msgsPerSec: expected a number/);
  refused({ weigth: 2 }, /^qos: unknown field\(s\) weigth/);
  refused({ tx: { bytes: 1 } }, /^qos\.tx: unknown field\(s\) bytes/);
  assert.throws(() => parseQosFlag("weight=3,tx-bits=5"), /--qos: "tx-bits=5" is not one of weight=N/);
  assert.throws(() => parseQosFlag("weight=0"), /--qos\.weight: expected a whole number/);
  assert.deepEqual(parseQosFlag("weight=3, tx-bytes=500M ,rx-msgs=1e5"), {
    weight: 3,
    tx: { bytesPerSec: 5e8 },
    rx: { msgsPerSec: 1e5 },
  });
  assert.deepEqual(qosSettings(parseQosFlag("tx-msgs=10k")), {
    weight: 1,
    txBytesPerSec: 0,
    txMsgsPerSec: 10_000,
    rxBytesPerSec: 0,
    rxMsgsPerSec: 0,
  });
});

test("Host.startGuest and setQos refuse an invalid policy before anything starts", async () => {
  await assert.rejects(
    host.startGuest({ module: QOS_GUEST, qos: { weight: -1 } }),
    /startGuest: qos\.weight: expected a whole number/,
  );
  await assert.rejects(host.setQos(1, { tx: { bytesPerSec: 0 } }), /setQos: qos\.tx\.bytesPerSec/);
  await assert.rejects(host.setQos(4242, { weight: 2 }), /domain 4242 has no myri device/);
});

/** The NIC's settings for `endpointId` once they satisfy `ok` (polled through the driver domain). */
async function nicQos(
  endpointOf: () => number | undefined,
  ok: (s: QosSettings) => boolean,
): Promise<QosSettings> {
  const until = Date.now() + 20_000;
  for (;;) {
    const info = await host.nicInfo();
    const id = endpointOf();
    const entry = info.qos?.find((q) => id === undefined || q.endpointId === id);
    if (entry && ok(entry.settings)) return entry.settings;
    if (Date.now() > until) throw new Error(`the NIC never showed the policy: ${JSON.stringify(info.qos)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("the policy reaches the NIC at open time and on change, one share for all the domain's endpoints; the guest cannot write its own node", async () => {
  const dom = await host.startGuest({
    module: QOS_GUEST,
    name: "qos-guest",
    pages: 512,
    args: { waitForWeights: [5, 6], extraEndpoints: 2 },
    qos: { weight: 2, tx: { bytesPerSec: 1e9 } },
  });
  const first = await nicQos(
    () => undefined,
    (s) => s.weight === 2,
  );
  assert.deepEqual(first, {
    weight: 2,
    txBytesPerSec: 1e9,
    txMsgsPerSec: 0,
    rxBytesPerSec: 0,
    rxMsgsPerSec: 0,
  });
  // Its three endpoints are one payer at the NIC: one weight, one set of caps (not three).
  const shares = async () => {
    const until = Date.now() + 20_000;
    for (;;) {
      const s = (await host.nicInfo()).qosShares ?? [];
      if (s.some((g) => g.length === 3) || Date.now() > until) return s;
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  assert.equal((await shares()).filter((g) => g.length === 3).length, 1, "one share of three endpoints");
  await host.setQos(dom.domid, { weight: 5, rx: { msgsPerSec: 2000 } });
  const changed = await nicQos(
    () => undefined,
    (s) => s.weight === 5,
  );
  assert.deepEqual(changed, {
    weight: 5,
    txBytesPerSec: 0,
    txMsgsPerSec: 0,
    rxBytesPerSec: 0,
    rxMsgsPerSec: 2000,
  });
  await host.setQos(dom.domid, { weight: 6 });
  const exit = await dom.exited;
  const out = exit.result as { write: string; rm: string; read: string };
  assert.match(out.write, /EACCES/, "the guest may not write its policy");
  assert.match(out.rm, /EACCES/, "nor remove it");
  // It may read it (whichever policy was in force when it looked).
  assert.ok([2, 5, 6].includes((JSON.parse(out.read) as { weight: number }).weight), out.read);
});

test("`myrixen host` config and `myrixen run --qos` refuse a bad policy in one line naming the field", async () => {
  const dir = mkdtempSync(join(tmpdir(), "qos-"));
  try {
    const file = join(dir, "host.json");
    writeFileSync(file, JSON.stringify({ qos: { weight: 3, tx: { bytesPerSec: -5 } } }));
    assert.throws(
      () => loadHostConfig(file),
      (e: Error) =>
        e instanceof ConfigError && /host\.json: field "qos\.tx\.bytesPerSec": .*> 0.*got -5/.test(e.message),
    );
    writeFileSync(file, JSON.stringify({ qos: { weight: 3, rx: { msgsPerSec: 1e4 } } }));
    assert.deepEqual(resolveHostSettings(loadHostConfig(file), {}).qos, {
      weight: 3,
      rx: { msgsPerSec: 1e4 },
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const r = await myrixen(["run", "-n", "1", "--qos", "weight=3,tx-bits=1", "hello"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--qos: "tx-bits=1" is not one of weight=N/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
});
