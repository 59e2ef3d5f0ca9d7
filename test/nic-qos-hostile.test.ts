/**
 * Audit of the NIC as a hostile guest drives it through its own window (the real NIC thread,
 * its control channel as myrback holds it, the endpoints' windows written from this thread).
 *
 * QoS (src/nic/qos.ts): a PULL with DFLAG_EXPOSURE names the endpoint whose pull right it
 * copies under, and that endpoint pays for the bytes (its deficit, its tx caps): the sender of
 * a rendezvous pays for its message. A refused one moved nothing, yet it was charged to the
 * endpoint it named as well — so any co-resident guest, knowing only a neighbour's endpoint id
 * (a small integer, no key, no session, no region of its own), could spend that neighbour's
 * message and byte caps with garbage descriptors, and the neighbour's own sends waited for
 * buckets it never used.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import type { NicControlRequest } from "../src/nic/control.js";
import { NicDevice } from "../src/nic/device.js";
import { MxStatus } from "../src/nic/status.js";
import {
  D_COOKIE,
  D_DEST_ENDPOINT,
  D_DEST_NIC,
  D_DEST_SESSION,
  D_DST_REGION,
  D_LENGTH,
  D_OPCODE,
  D_SRC_KEY,
  D_SRC_REGION,
  DFLAG_EXPOSURE,
  E_COOKIE,
  EventType,
  Opcode,
} from "../src/nic/window.js";
import type { SyncCallClient } from "../src/xen/sync-call.js";
import { control, openEndpoint, WindowOwner } from "./helpers/nic-harness.js";
import { until } from "./helpers/until.js";

const NIC_ID = 41;

/** An endpoint's owner that posts raw descriptors and records each answer's type and status. */
class Owner extends WindowOwner {
  static open(ctl: SyncCallClient<NicControlRequest>, owner: string, group: number): Owner {
    return new Owner(ctl, openEndpoint(ctl, owner, 0, group));
  }
  readonly types = new Map<number, number>();
  post(words: Record<number, number>): void {
    this.postDesc(words);
  }
  protected onEvent(type: number, base: number): boolean {
    const cookie = this.w[base + E_COOKIE];
    this.types.set(cookie, type & 0xffff);
    this.byCookie.set(cookie, type >>> 16);
    return true;
  }
}

let nic: NicDevice;
let ctl: SyncCallClient<NicControlRequest>;
before(async () => {
  nic = await NicDevice.start({ nicId: NIC_ID });
  ctl = control(nic);
});
after(async () => {
  await nic?.stop();
});

test("a garbage exposure PULL naming a neighbour's endpoint is charged to its poster, not to the neighbour's caps", async () => {
  // The victim's domain is capped at one message per 1000 s: its first message may go now (its
  // bucket is not in debt), the next one only after 1000 s. The attacker is not capped.
  const victim = Owner.open(ctl, "victim", 1);
  const attacker = Owner.open(ctl, "attacker", 2);
  ctl.call({
    op: "set_qos",
    endpointId: victim.id,
    settings: { weight: 1, txBytesPerSec: 0, txMsgsPerSec: 0.001, rxBytesPerSec: 0, rxMsgsPerSec: 0 },
  });
  const base = () => nic.counters().endpoints;

  // The attack: one PULL "from" a pull right of the victim's, with nothing right in it (no
  // session, no key, not even a destination region of its own). The NIC refuses it.
  attacker.post({
    [D_OPCODE]: Opcode.Pull | (DFLAG_EXPOSURE << 16),
    [D_COOKIE]: 7,
    [D_SRC_REGION]: 0,
    [D_SRC_KEY]: 1,
    [D_DST_REGION]: 0,
    [D_LENGTH]: 1 << 20,
    [D_DEST_ENDPOINT]: victim.id,
    [D_DEST_SESSION]: 0,
  });
  await attacker.answer(7, "the attacker's refused PULL");
  assert.equal(attacker.types.get(7), EventType.Error, "the garbage PULL is refused");
  assert.equal(base()[victim.id].qos_bytes, 0, "the victim, which posted nothing, was charged nothing");
  assert.ok(base()[attacker.id].qos_bytes > 0, "the attacker pays for what it posted");

  // The victim's first message: its cap allows it now, whatever its neighbour posted.
  victim.post({
    [D_OPCODE]: Opcode.Send,
    [D_COOKIE]: 8,
    [D_LENGTH]: 0,
    [D_DEST_NIC]: NIC_ID,
    [D_DEST_ENDPOINT]: victim.id,
    [D_DEST_SESSION]: victim.session,
  });
  // Either it completes, or the NIC holds it for its cap (then it would wait 1000 s).
  await until(() => {
    victim.drain();
    return victim.types.get(8) === EventType.SendDone || base()[victim.id].qos_deferred > 0;
  }, "the victim's SEND to complete or be held for its cap");
  assert.equal(base()[victim.id].qos_deferred, 0, "the victim's SEND was not held for a cap it never used");
  assert.equal(victim.types.get(8), EventType.SendDone);
  assert.equal(victim.byCookie.get(8), MxStatus.SUCCESS);
  victim.close();
  attacker.close();
});
