/** Test helper: one cluster key for the NIC links a test file makes in its own process. */
import { randomBytes } from "node:crypto";

export const LINK_KEY: Uint8Array = randomBytes(32);
