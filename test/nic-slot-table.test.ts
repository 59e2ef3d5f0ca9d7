/**
 * The NIC's SlotTable (src/nic/slot-table.ts) as a unit: slots taken and released through the
 * free list, ids that name their slot and change generation on reuse (so a late reply does
 * not match), hostile ids refused, and the generation wrapping within its bits.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { SlotTable } from "../src/nic/slot-table.js";

test("takes every slot once, then is full; a released slot is taken again", () => {
  const t = new SlotTable(4);
  const got = new Set<number>();
  for (let i = 0; i < 4; i++) {
    assert.equal(t.full, false);
    got.add(t.take());
  }
  assert.deepEqual([...got].sort(), [0, 1, 2, 3]);
  assert.equal(t.full, true);
  assert.equal(t.count, 4);
  assert.equal(t.release(2), true);
  assert.equal(t.release(2), false, "releasing a free slot does nothing");
  assert.equal(t.count, 3);
  assert.equal(t.used[2], 0);
  assert.equal(t.take(), 2, "the only free slot");
  assert.equal(t.used[2], 1);
});

test("nextId is the id the next take gives; ids carry the slot in their low bits", () => {
  const t = new SlotTable(256, 8);
  for (let i = 0; i < 10; i++) {
    const next = t.nextId();
    const s = t.take();
    assert.equal(t.id[s], next);
    assert.equal(next & 0xff, s);
  }
});

test("an id finds its slot only while that take holds it", () => {
  const t = new SlotTable(8);
  const s = t.take();
  const id = t.id[s];
  assert.equal(t.find(id), s);
  t.release(s);
  assert.equal(t.find(id), -1, "released");
  // Take every slot: s is reused under a new generation; the old id still does not match.
  for (let i = 0; i < 8; i++) t.take();
  assert.notEqual(t.id[s], id);
  assert.equal(t.find(id), -1, "a late reply for a reused slot");
  assert.equal(t.find(t.id[s]), s);
});

test("hostile ids: a slot beyond the capacity, a wrong generation, junk bits", () => {
  const t = new SlotTable(5, 8);
  const s = t.take();
  const id = t.id[s];
  assert.equal(t.find(id ^ 0x100), -1, "another generation");
  assert.equal(t.find((id & ~0xff) | 7), -1, "slot 7 of a 5-slot table");
  assert.equal(t.find(0xffffffff), -1);
  assert.equal(t.find(-1), -1);
  assert.equal(t.find(id | 0), s, "the same id read as a signed word still matches");
});

test("the generation wraps within 32 - slotBits bits and ids stay u32", () => {
  const t = new SlotTable(1, 24);
  let last = -1;
  for (let i = 0; i < 300; i++) {
    const s = t.take();
    const id = t.id[s];
    assert.ok(id >= 0 && id <= 0xffffffff);
    assert.notEqual(id, last);
    assert.equal(id >>> 24, (i + 1) & 0xff);
    last = id;
    t.release(s);
  }
  const wide = new SlotTable(2, 1);
  wide.id[0] = 0xfffffffe; // generation at its largest: the next take wraps to 0
  assert.equal(wide.nextId(), 0);
});

test("bad shapes are refused", () => {
  assert.throws(() => new SlotTable(0), RangeError);
  assert.throws(() => new SlotTable(300, 8), RangeError);
  assert.throws(() => new SlotTable(4, 0), RangeError);
  assert.throws(() => new SlotTable(1.5), RangeError);
});
