/**
 * The NIC's idle poll (nic/poll-budget.ts), driven with the times a NIC thread would have
 * measured: it starts at the longest budget, halves after each wake-up that came later than
 * that (down to the shortest), grows past a gap a longer poll would have caught, and ignores
 * wake-ups by the NIC's own timer and wake-ups without a sleep before them.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  POLL_AFTER_EVENTS_MS,
  POLL_AFTER_FRAMES_MS,
  POLL_BUDGET_MS,
  POLL_MIN_MS,
  PollBudget,
} from "../src/nic/poll-budget.js";

test("wake-ups later than the longest poll halve the budget, down to the shortest", () => {
  const p = new PollBudget();
  assert.equal(p.ms, POLL_BUDGET_MS);
  let t = 0;
  const seen: number[] = [];
  for (let i = 0; i < 6; i++) {
    // The reply to a frame sent across the wire: 80 µs after the NIC went quiet.
    p.slept(t);
    t += 0.08;
    p.woke(t);
    seen.push(p.ms);
  }
  assert.deepEqual(seen, [0.02, 0.01, 0.005, POLL_MIN_MS, POLL_MIN_MS, POLL_MIN_MS]);
});

test("a wake-up a longer poll would have caught grows the budget past its gap, up to the longest", () => {
  const p = new PollBudget();
  for (let i = 0; i < 4; i++) {
    p.slept(0);
    p.woke(1);
  }
  assert.equal(p.ms, POLL_MIN_MS);
  // A guest answering the event just delivered, 18 µs after the NIC went quiet.
  p.slept(10);
  p.woke(10.018);
  assert.ok(Math.abs(p.ms - 0.027) < 1e-9, `1.5 × the gap: ${p.ms}`);
  p.slept(20);
  p.woke(20.004);
  assert.ok(Math.abs(p.ms - 0.04) < 1e-9, `doubles, capped at the longest: ${p.ms}`);
});

test("a wake-up by the NIC's own timer, or one with no sleep before it, changes nothing", () => {
  const p = new PollBudget();
  p.slept(0);
  p.wokeByTimer();
  p.woke(5);
  assert.equal(p.ms, POLL_BUDGET_MS, "the timer's wake-up ended the spell: the later one is not a gap");
  p.woke(10);
  assert.equal(p.ms, POLL_BUDGET_MS);
});

test("each budget has its own longest poll: the NIC's after-events one grows to 80 µs, its after-frames one stops at 20", () => {
  const events = new PollBudget(POLL_AFTER_EVENTS_MS);
  const frames = new PollBudget(POLL_AFTER_FRAMES_MS);
  assert.equal(events.ms, 0.08);
  assert.equal(frames.ms, 0.02);
  // A guest answering 60 µs after the NIC went quiet: within the longer budget, so it stays.
  events.slept(0);
  events.woke(0.06);
  assert.equal(events.ms, 0.08);
  // The same gap after frames is beyond that budget's longest: it halves.
  frames.slept(0);
  frames.woke(0.06);
  assert.equal(frames.ms, 0.01);
});
