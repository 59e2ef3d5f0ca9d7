/**
 * The NIC keeps a capped domain's debt past its last endpoint (nic/qos.ts `owed`: closing and
 * reopening must not reset a cap), but not past the domain: ids come back once the toolstack's
 * round robin wraps, and a newcomer given a dead debtor's id would start in its debt (and the
 * NIC would hold every indebted dead domain until paid). myrback's forgetDomain tells the NIC
 * (forget_group) when the domain itself is gone.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Host } from "../src/host/host.js";
import type { NicControlRequest } from "../src/nic/control.js";
import { NicDevice } from "../src/nic/device.js";
import { nextMessage } from "./helpers/messages.js";
import { connectTo, scriptedGuest } from "./helpers/mx-script.js";
import { control } from "./helpers/nic-harness.js";

const QOS_DEBT = new URL("./fixtures/guests/qos-debt.js", import.meta.url);

let host: Host;
before(async () => {
  host = await Host.start({ nicId: 12, verbose: !!process.env.MYRI_VERBOSE });
});
after(async () => {
  await host?.stop();
});

test("a dead domain's cap debt is forgotten with it, kept while it lives", async () => {
  // 100 B/s: a 4,000-byte message leaves ~40 s of debt, far longer than the test waits.
  const dom = await host.startGuest({
    module: QOS_DEBT,
    name: "debtor",
    pages: 256,
    args: { size: 4000 },
    qos: { tx: { bytesPerSec: 100 } },
  });
  const [said] = (await nextMessage(dom)) as [{ closed: string[] }];
  assert.deepEqual(said.closed, ["MX_STATUS_SUCCESS", "MX_STATUS_SUCCESS"]);
  // Its endpoint is closed, the domain lives: the debt is kept (reopening must not reset it).
  assert.deepEqual((await host.nicInfo()).qosOwed, [dom.domid]);
  dom.send("go");
  await dom.exited;
  // Its debt has ~35 s to run: gone within 15 s only if forgotten with the domain.
  const deadline = Date.now() + 15_000;
  let owed = (await host.nicInfo()).qosOwed ?? [];
  while (owed.includes(dom.domid) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    owed = (await host.nicInfo()).qosOwed ?? [];
  }
  assert.deepEqual(owed, [], `domain ${dom.domid} is gone but the NIC still keeps its debt`);
});

test("forget_group is checked like every control request", async () => {
  const nic = await NicDevice.start({ nicId: 44 });
  try {
    const ctl = control(nic);
    const call = (r: unknown) => ctl.call(r as NicControlRequest);
    assert.throws(
      () => call({ op: "forget_group", group: -1 }),
      /EINVAL: forget_group: group must be a u32, got -1/,
    );
    assert.throws(() => call({ op: "forget_group" }), /group must be a u32, got undefined/);
    // A group with nothing kept: nothing to do, no error.
    assert.equal(call({ op: "forget_group", group: 5 }), null);
  } finally {
    await nic.stop();
  }
});

test("a domain given a dead domain's id gets lanes of another writer group: no reader's kept debt of the dead one is its", async () => {
  // The receiving library keeps a writer's lane buckets while in debt (lane-policer.ts), by the
  // group myrback writes into the lane's policy page. It was the writer's domain id, which comes
  // back once the toolstack's round robin wraps; now one per domain incarnation.
  const reader = await scriptedGuest(host, "reader");
  const groupAt = async (domid: number) => {
    const eps = await host.backendEndpoints();
    const mine = eps.find((e) => e.endpointId === reader.addr.endpoint);
    return mine?.channels.find((c) => c.peerDomid === domid)?.groupIn;
  };
  const first = await scriptedGuest(host, "writer");
  await connectTo(first, reader, "r");
  const g1 = await groupAt(first.d.domid);
  assert.equal(typeof g1, "number", "the lane names a writer group");
  first.d.send({ op: "exit" });
  await first.d.exited;
  await host.hypervisor.destroyDomain(first.d.domid);
  // The next domain gets the dead one's id, as after the round robin wraps (a test's shortcut).
  // The id is held back while a live domain's grant or event channel still names it (the reader's
  // library and myrback let go of theirs when they see the writer gone, which takes a while on a
  // loaded machine): wait for that, as allocDomid would.
  const hv = host.hypervisor as unknown as {
    nextDomid: number;
    records: Map<number, unknown>;
    namedReleasedIds(): Set<number>;
  };
  const free = Date.now() + 20_000;
  while ((hv.records.has(first.d.domid) || hv.namedReleasedIds().has(first.d.domid)) && Date.now() < free)
    await new Promise((r) => setTimeout(r, 50));
  hv.nextDomid = first.d.domid;
  const again = await scriptedGuest(host, "writer-again");
  assert.equal(again.d.domid, first.d.domid, "the same id");
  await connectTo(again, reader, "r");
  const g2 = await groupAt(again.d.domid);
  assert.equal(typeof g2, "number");
  assert.notEqual(g2, g1, "another writer group");
  for (const g of [again, reader]) {
    g.d.send({ op: "exit" });
    await g.d.exited;
  }
});
