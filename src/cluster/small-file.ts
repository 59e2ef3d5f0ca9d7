/**
 * Reads a small text file a user names (a hostfile, a config file) without trusting the name:
 * opened non-blocking, so a FIFO or a device cannot hold the command waiting for a writer;
 * refused unless it is a regular file; refused past a size bound, so `/dev/zero` or a wrong
 * multi-gigabyte file is one line, not a process eating memory. (The key file has its own
 * reader with its own rules: auth.ts readKeyFile.)
 */
import fs from "node:fs";

/** Hostfiles and config files are far below this. */
export const SMALL_FILE_MAX_BYTES = 1 << 20;

/** The file's text (UTF-8); throws an Error whose message names `what` and the file. */
export function readSmallTextFile(file: string, what: string, maxBytes = SMALL_FILE_MAX_BYTES): string {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0));
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new Error(`${what} ${file} is not a regular file`);
    if (st.size > maxBytes)
      throw new Error(`${what} ${file} is ${st.size} bytes, more than ${maxBytes} (is it the right file?)`);
    const buf = Buffer.alloc(st.size);
    let got = 0;
    while (got < buf.length) {
      const n = fs.readSync(fd, buf, got, buf.length - got, got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got).toString("utf8");
  } finally {
    fs.closeSync(fd);
  }
}
