/** Byte helpers of the library's hot paths (little-endian words, copies sized for small messages). */

/** The little-endian u32 at byte `o` of `b`. */
export function getWord(b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
}

export function putWord(b: Uint8Array, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

/** Whether the 6 bytes of `f` at `at` are `mac`. */
export function macAt(f: Uint8Array, at: number, mac: Uint8Array): boolean {
  for (let i = 0; i < 6; i++) if (f[at + i] !== mac[i]) return false;
  return true;
}
