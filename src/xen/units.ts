/**
 * Byte counts as people read them (1.5 KiB, 64 MiB): a leaf every layer may use, from the MX
 * library's error messages to the benchmark tables (programs/rows.ts re-exports it).
 */

/** 0 B, 8 B, 1 KiB, 1.5 KiB, 64 KiB, 4 MiB … */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  const text = Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 2 : 1).replace(/\.?0+$/, "");
  return `${text} ${units[u]}`;
}
