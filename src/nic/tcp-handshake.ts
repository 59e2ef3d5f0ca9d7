/**
 * The handshake that opens each of the two TCP connections of a link between two NICs
 * (tcp-link.ts carries the frames once it is done). Protocol version 5; both sides hold the
 * cluster key, at least 32 bytes, which never crosses the wire:
 *   1. each side sends a 48-byte hello — u32 magic "MXTL", u16 protocol version, u16 lane
 *      (the connecting side's: 0 the main connection, 1 the bulk connection; the accepting
 *      side sends 0), u32 sender NIC id, u32 FRAME_MAX, 32 random bytes (its nonce) —
 *      little-endian;
 *   2. the connecting side ("dial") sends its 32-byte proof: HMAC-SHA256(key, label, version,
 *      role, lane, prover's NIC id, verifier's NIC id, prover's nonce, verifier's nonce, bind);
 *      on the bulk lane the 32-byte bind goes first, in the clear: the accepting side's nonce
 *      of the main connection this bulk connection belongs to (zeros on the main lane);
 *   3. the accepting side checks it (crypto.timingSafeEqual) and only then sends its own proof
 *      (role "accept"), so a peer that cannot prove the key learns nothing but a nonce; or,
 *      on the main lane, if it will not take a link from that NIC (its bounds, link-bound.ts),
 *      a refusal instead: a 32-byte tag (the proof in role "refuse", over the refusal too),
 *      a u8 code (REFUSED_*), a u8 length and that many bytes of UTF-8 reason; then it closes;
 *   4. the connecting side checks that proof (or the refusal's tag: a refused dial fails with
 *      the code and the reason, HandshakeError.refusal); then frames flow.
 * Fresh nonces on both sides stop replays, the role stops a proof being reflected back, the
 * NIC ids bind the proof to the claimed identity, and the lane and bind tie a bulk connection
 * to one main connection (tcp-link.ts pairs them: a bulk connection naming no main connection
 * that waits for one is refused). A bad hello (magic, version, NIC id, frame
 * size), a wrong proof, a close or the deadline drops the connection with a reason
 * (HandshakeError, which tcp-link.ts logs with the remote address and counts in tcpLinkStats);
 * only a link that passed all four steps reaches the NIC, so an unauthenticated peer never
 * displaces an attached link. Every byte from the socket is hostile input.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type net from "node:net";
import { FRAME_MAX } from "./frame.js";

export const TCP_LINK_MAGIC = 0x4c54584d; // "MXTL" in little-endian bytes
/**
 * 5: the accepting side may answer the dialer's proof with a refusal (step 3); 4: the main
 * connection carries probes and their answers (tcp-link.ts PING/PONG); 3: a link
 * is two connections, main and bulk, each proved (2: one connection; 1 had no authentication).
 */
export const TCP_LINK_VERSION = 5;
export const TCP_NONCE_BYTES = 32;
export const TCP_HELLO_BYTES = 16 + TCP_NONCE_BYTES;
export const TCP_PROOF_BYTES = 32;
/** The shortest cluster key a link accepts. */
export const TCP_LINK_MIN_KEY_BYTES = 32;
const PROOF_LABEL = Buffer.from("MyriXen TCP link proof\0", "latin1");
const ROLE_DIAL = 1;
const ROLE_ACCEPT = 2;
const ROLE_REFUSE = 3;
/** Refusal codes (step 3): the listener keeps no more NIC ids from the dialer's address, or in all (link-bound.ts). */
export const REFUSED_LINKS_PER_ADDRESS = 1;
export const REFUSED_LINKS = 2;
/** The longest refusal reason sent, in bytes. */
const REFUSAL_REASON_MAX = 255;

/** Why the accepting side will not take a link: a REFUSED_* code and a reason for the dialer. */
export interface HandshakeRefusal {
  code: number;
  reason: string;
}
/** The connections of a link: frames and credits, and bulk pull data (tcp-link.ts). */
export const LANE_MAIN = 0;
export const LANE_BULK = 1;
/** The bind of a main connection (it names none). */
const NO_BIND = Buffer.alloc(TCP_NONCE_BYTES);

function hello(nicId: number, nonce: Buffer, lane: number): Buffer {
  const b = Buffer.alloc(TCP_HELLO_BYTES);
  b.writeUInt32LE(TCP_LINK_MAGIC, 0);
  b.writeUInt16LE(TCP_LINK_VERSION, 4);
  b.writeUInt16LE(lane, 6);
  b.writeUInt32LE(nicId >>> 0, 8);
  b.writeUInt32LE(FRAME_MAX, 12);
  nonce.copy(b, 16);
  return b;
}

/** A reason the first 6 bytes (magic, version) already give, or null. */
function checkPrefix(b: Buffer): string | null {
  const magic = b.readUInt32LE(0);
  if (magic !== TCP_LINK_MAGIC)
    return `bad magic 0x${magic.toString(16).padStart(8, "0")} (expected 0x${TCP_LINK_MAGIC.toString(16)}): not a MyriXen TCP link`;
  const version = b.readUInt16LE(4);
  if (version !== TCP_LINK_VERSION)
    return `protocol version mismatch: peer speaks version ${version}, this NIC speaks ${TCP_LINK_VERSION}${version < TCP_LINK_VERSION ? " (an unauthenticated older NIC: upgrade it)" : ""}`;
  return null;
}

/** The peer's NIC id from a full hello, or a string saying why the hello is refused. */
function parseHello(b: Buffer, ownNic: number): number | string {
  const bad = checkPrefix(b);
  if (bad) return bad;
  const peer = b.readUInt32LE(8);
  if (peer === ownNic) return `peer claims this NIC's own id ${peer}`;
  const frameMax = b.readUInt32LE(12);
  if (frameMax !== FRAME_MAX)
    return `frame size mismatch: peer's FRAME_MAX is ${frameMax}, ours ${FRAME_MAX}`;
  return peer;
}

/** HMAC-SHA256 over fixed-size fields (so no two inputs concatenate alike). */
function proof(
  key: Buffer,
  role: number,
  lane: number,
  prover: number,
  verifier: number,
  proverNonce: Buffer,
  verifierNonce: Buffer,
  bind: Buffer,
  refusal?: Buffer,
): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16LE(TCP_LINK_VERSION, 0);
  h.writeUInt8(role, 2);
  h.writeUInt8(lane, 3);
  h.writeUInt32LE(prover >>> 0, 4);
  h.writeUInt32LE(verifier >>> 0, 8);
  return createHmac("sha256", key)
    .update(PROOF_LABEL)
    .update(h)
    .update(proverNonce)
    .update(verifierNonce)
    .update(bind)
    .update(refusal ?? Buffer.alloc(0))
    .digest();
}

/** A refusal's code, length and reason bytes (what its tag covers, after the tag on the wire). */
function refusalBody(r: HandshakeRefusal): Buffer {
  const reason = Buffer.from(r.reason, "utf8").subarray(0, REFUSAL_REASON_MAX);
  return Buffer.concat([Buffer.from([r.code & 0xff, reason.length]), reason]);
}

export function checkNicId(nicId: unknown, what: string): number {
  if (!Number.isInteger(nicId) || (nicId as number) < 0 || (nicId as number) > 0xffffffff)
    throw new RangeError(`${what}: nicId must be a u32, got ${String(nicId)}`);
  return nicId as number;
}

export function checkPort(port: unknown, what: string, allowZero: boolean): number {
  if (!Number.isInteger(port) || (port as number) < (allowZero ? 0 : 1) || (port as number) > 65535)
    throw new RangeError(
      `${what}: port must be an integer in ${allowZero ? 0 : 1}..65535, got ${String(port)}`,
    );
  return port as number;
}

/** A private copy of the cluster key (it may come as a Uint8Array through postMessage). */
export function checkKey(key: unknown, what: string): Buffer {
  if (!(key instanceof Uint8Array) || key.length < TCP_LINK_MIN_KEY_BYTES)
    throw new RangeError(
      `${what}: key must be the cluster key, a Uint8Array of at least ${TCP_LINK_MIN_KEY_BYTES} bytes`,
    );
  return Buffer.from(key);
}

/**
 * Why a handshake failed; `auth`: the peer's proof did not match the key; `refusal`: the
 * accepting side (it proved the key) refused the link, or (on that side) this side refused it;
 * `foreign`: the peer sent something other than the MyriXen magic, or closed before it (it is
 * some other service), so the message may quote what it sent (a dialer keeps that to its log).
 */
export class HandshakeError extends Error {
  constructor(
    message: string,
    readonly auth = false,
    readonly refusal?: HandshakeRefusal,
    readonly foreign = false,
  ) {
    super(message);
  }
}

/**
 * The accepting side's say on a main connection whose dialer proved the key, claiming NIC
 * `peer`: null takes it, a refusal refuses it (step 3).
 */
export type HandshakeAdmit = (peer: number) => HandshakeRefusal | null;

/** What a finished handshake tells: who, on which lane, and the nonces. */
export interface HandshakeResult {
  peer: number;
  /** Bytes that followed the peer's last handshake message. */
  rest: Buffer;
  lane: number;
  /** The main connection a bulk connection belongs to (the accepting side's nonce on it). */
  bind: Buffer;
  myNonce: Buffer;
  peerNonce: Buffer;
}

/**
 * The handshake on a fresh socket (steps 1–4 of the header), in `role`. `done` resolves with
 * the peer's NIC id, the lane, the nonces and any bytes that followed its last handshake
 * message; it rejects (socket destroyed) on a bad hello, a wrong proof, a close, an error, the
 * deadline or abort(). A dialer names its `lane` and, on the bulk lane, the `bind`.
 */
export class Handshake {
  readonly done: Promise<HandshakeResult>;
  private settled = false;
  private heardHello = false;
  private fail: (why: string, auth?: boolean) => void = () => {};

  /** `timeoutMs`: the time left; `statedMs`: the limit the error names (default timeoutMs). */
  constructor(
    socket: net.Socket,
    role: "dial" | "accept",
    nicId: number,
    key: Buffer,
    timeoutMs: number,
    statedMs = timeoutMs,
    dialLane = LANE_MAIN,
    dialBind: Buffer = NO_BIND,
    admit?: HandshakeAdmit,
  ) {
    this.done = new Promise((resolve, reject) => {
      const myNonce = randomBytes(TCP_NONCE_BYTES);
      let buf: Buffer = Buffer.alloc(0);
      let peer = -1;
      let peerNonce: Buffer | null = null;
      // The accepting side learns the lane from the dialer's hello.
      let lane = role === "dial" ? dialLane : -1;
      let bind = role === "dial" ? dialBind : NO_BIND;
      // A silent peer quotes nothing it sent: the dialer may say it timed out.
      const timer = setTimeout(
        () => fail(`no handshake within ${statedMs} ms`, false, undefined, false),
        timeoutMs,
      );
      const cleanup = () => {
        this.settled = true;
        clearTimeout(timer);
        socket.off("data", onData);
        socket.off("close", onClose);
        socket.off("error", onError);
      };
      const fail = (
        why: string,
        auth = false,
        refusal?: HandshakeRefusal,
        foreign = peerNonce === null && !(buf.length >= 4 && buf.readUInt32LE(0) === TCP_LINK_MAGIC),
      ) => {
        if (this.settled) return;
        cleanup();
        socket.destroy();
        reject(new HandshakeError(why, auth, refusal, foreign));
      };
      this.fail = fail;
      const onData = (chunk: Buffer) => {
        // At most one hello and one proof are buffered; what follows is handed on as `rest`.
        buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
        if (peerNonce === null) {
          if (buf.length >= 6) {
            const bad = checkPrefix(buf);
            if (bad) return fail(bad);
          }
          if (buf.length < TCP_HELLO_BYTES) return;
          const r = parseHello(buf, nicId);
          if (typeof r === "string") return fail(r);
          if (role === "accept") {
            lane = buf.readUInt16LE(6);
            if (lane !== LANE_MAIN && lane !== LANE_BULK) return fail(`unknown lane ${lane} in the hello`);
          }
          peer = r;
          peerNonce = Buffer.from(buf.subarray(16, TCP_HELLO_BYTES));
          this.heardHello = true;
          buf = buf.subarray(TCP_HELLO_BYTES);
          if (role === "dial") {
            const p = proof(key, ROLE_DIAL, lane, nicId, peer, myNonce, peerNonce, bind);
            socket.write(lane === LANE_BULK ? Buffer.concat([bind, p]) : p);
          }
        }
        // A bulk dialer's proof comes after its bind.
        const bindBytes = role === "accept" && lane === LANE_BULK ? TCP_NONCE_BYTES : 0;
        if (buf.length < bindBytes + TCP_PROOF_BYTES) return;
        if (bindBytes > 0) bind = Buffer.from(buf.subarray(0, bindBytes));
        const peerRole = role === "dial" ? ROLE_ACCEPT : ROLE_DIAL;
        const want = proof(key, peerRole, lane, peer, nicId, peerNonce, myNonce, bind);
        const got = buf.subarray(bindBytes, bindBytes + TCP_PROOF_BYTES);
        if (!timingSafeEqual(got, want)) {
          const authFailed = () =>
            fail(
              `authentication failed: NIC ${peer}'s proof does not match this NIC's cluster key (another key, or not a member of this cluster)`,
              true,
            );
          if (role === "accept") return authFailed();
          // Not the accepting side's proof: its refusal (code, length, reason), if its tag proves the key.
          if (buf.length < TCP_PROOF_BYTES + 2) return;
          const len = TCP_PROOF_BYTES + 2 + buf.readUInt8(TCP_PROOF_BYTES + 1);
          if (buf.length < len) return;
          const body = buf.subarray(TCP_PROOF_BYTES, len);
          const tag = proof(key, ROLE_REFUSE, lane, peer, nicId, peerNonce, myNonce, bind, body);
          if (!timingSafeEqual(got, tag)) return authFailed();
          const refusal = { code: body.readUInt8(0), reason: body.subarray(2).toString("utf8") };
          return fail(`NIC ${peer} refused the link: ${refusal.reason}`, false, refusal);
        }
        if (role === "accept") {
          const refusal = lane === LANE_MAIN && admit !== undefined ? admit(peer) : null;
          if (refusal !== null) {
            // Said to the dialer (it proved the key), then closed: no link, no frame.
            const body = refusalBody(refusal);
            const tag = proof(key, ROLE_REFUSE, lane, nicId, peer, myNonce, peerNonce, bind, body);
            cleanup();
            socket.end(Buffer.concat([tag, body]));
            // The dialer closes once it has read it; a dialer that does not is dropped.
            setTimeout(() => socket.destroy(), 2000).unref?.();
            reject(new HandshakeError(`refused NIC ${peer}: ${refusal.reason}`, false, refusal));
            return;
          }
          socket.write(proof(key, ROLE_ACCEPT, lane, nicId, peer, myNonce, peerNonce, bind));
        }
        const rest = Buffer.from(buf.subarray(bindBytes + TCP_PROOF_BYTES));
        cleanup();
        socket.pause();
        resolve({ peer, rest, lane, bind, myNonce, peerNonce });
      };
      const onClose = () => {
        if (peerNonce === null)
          fail(
            `connection closed during the handshake (after ${buf.length} of ${TCP_HELLO_BYTES} hello bytes)`,
          );
        else if (role === "dial")
          fail(
            `NIC ${peer} closed the connection instead of proving the cluster key: it refused this NIC's proof (the two hosts have different cluster keys?), or dropped the connection unproved (more connections in its handshake than it holds; its log says which)`,
          );
        else fail(`connection closed before NIC ${peer} proved the cluster key`);
      };
      const onError = (e: Error) => fail(`socket error during the handshake: ${e.message}`);
      socket.on("data", onData);
      socket.on("close", onClose);
      socket.on("error", onError);
      socket.write(hello(nicId, myNonce, role === "dial" ? dialLane : LANE_MAIN));
    });
  }

  /** The peer has sent a well-formed hello (a listener drops those that have not first). */
  get saidHello(): boolean {
    return this.heardHello;
  }

  abort(why: string): void {
    this.fail(why);
  }
}
