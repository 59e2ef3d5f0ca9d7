/**
 * Which MX driver a program gets, by where it runs: a native process of the driver domain's
 * OS gets the native driver; a guest VM gets myrifront (the bypass path). The one place that
 * choice is made (Mx.init adds the split path around it). Synchronous, so
 * mx_init can call it: myrifront's xenbus handshake blocks the caller until the backend
 * connected (or fails with MX_NO_DEV / MX_NO_DRIVER saying why).
 */

import type { MxDriver } from "../myrixen/driver-abi.js";
import { MyriFront, type MyriFrontOptions } from "../myrixen/front.js";
import type { Guest } from "../xen/guest/guest.js";
import { NativeDriver } from "./native-driver.js";

export function openDriver(guest: Guest, opts: MyriFrontOptions = {}): MxDriver {
  if (guest.native) return new NativeDriver(guest);
  return MyriFront.connect(guest, opts);
}
