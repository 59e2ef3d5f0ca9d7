/**
 * The adaptive spin's schedule (mx/spin-budget.ts), driven with the waits an endpoint would
 * have measured: it grows past waits a longer spin would have caught, shrinks after long
 * ones, drops to the base on a preemption and stays there a while, and never adapts when
 * no maximum above the base was given.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { CALM_BLOCKS, SpinBudget } from "../src/mx/spin-budget.js";

test("a fixed spin (max ≤ base) never changes", () => {
  const s = new SpinBudget(20, 20);
  assert.equal(s.adaptive, false);
  s.after(100, true, false);
  s.after(5000, true, true);
  assert.equal(s.budgetUs, 20);
});

test("a wait that slept but ended within the maximum grows the spin past it, up to the maximum", () => {
  const s = new SpinBudget(20, 1000);
  s.after(150, true, false);
  assert.equal(s.budgetUs, 300);
  s.after(100, true, false);
  assert.equal(s.budgetUs, 600, "doubles even when the wait was shorter than the spin");
  s.after(900, true, false);
  assert.equal(s.budgetUs, 1000, "capped at the maximum");
  s.after(50, false, false);
  assert.equal(s.budgetUs, 1000, "a wait the spin caught leaves it");
});

test("waits longer than the maximum halve the spin, down to the base", () => {
  const s = new SpinBudget(20, 1000);
  s.after(400, true, false);
  assert.equal(s.budgetUs, 800);
  s.after(50_000, true, false);
  assert.equal(s.budgetUs, 400);
  for (let i = 0; i < 10; i++) s.after(50_000, true, false);
  assert.equal(s.budgetUs, 20);
});

test("a preemption drops the spin to the base and keeps it there for CALM_BLOCKS waits", () => {
  const s = new SpinBudget(20, 1000);
  s.after(400, true, false);
  assert.equal(s.budgetUs, 800);
  s.after(300, true, true);
  assert.equal(s.budgetUs, 20);
  for (let i = 0; i < CALM_BLOCKS; i++) s.after(100, true, false);
  assert.equal(s.budgetUs, 20, "no growth while calm");
  s.after(100, true, false);
  assert.equal(s.budgetUs, 200, "grows again afterwards");
});
