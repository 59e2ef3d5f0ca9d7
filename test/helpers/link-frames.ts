// Test helper: link frames from NIC 2 to NIC 1, as the TCP link tests send them — whole, or
// with the 4-byte length prefix a link writes on its socket (for tests that write by hand).
import {
  F_DEST_NIC,
  F_PULL_OFFSET,
  F_SRC_NIC,
  FRAME_HEADER_BYTES,
  initFrame,
  setWord,
} from "../../src/nic/frame.js";

/** A frame of `type` with `payload` bytes (zeros) at pull offset `offset`. */
export function linkFrame(type: number, payload: number, offset = 0): Uint8Array {
  const f = new Uint8Array(FRAME_HEADER_BYTES + payload);
  initFrame(f, type, payload);
  setWord(f, F_SRC_NIC, 2);
  setWord(f, F_DEST_NIC, 1);
  setWord(f, F_PULL_OFFSET, offset);
  return f;
}

/** The frame as the socket carries it: its length, then the frame. */
export function onWire(frame: Uint8Array): Buffer {
  const b = Buffer.alloc(4 + frame.length);
  b.writeUInt32LE(frame.length, 0);
  b.set(frame, 4);
  return b;
}
