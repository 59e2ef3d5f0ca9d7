/**
 * xenbus: the frontend/backend handshake of Xen split drivers, over XenStore. The toolstack
 * creates both device directories (createDevice); then each side walks the io/xenbus.h states
 * by writing its `state` key (the number as a string, as Linux xenbus_switch_state does) and
 * follows the other side's with a watch:
 *
 *   backend:  Initialising → InitWait (features published) ........ → Connected
 *   frontend: Initialising ........ → Initialised (ring-ref, event-channel ...) ... → Connected
 *   teardown: Closing → Closed, on both sides.
 *
 * One concern per file under xenbus/, each importing only state.ts below it:
 *
 *   backend.ts    a backend's side: XenbusBackend, BackendDeviceWatcher (myrback, netback)
 *   frontend.ts   a frontend's side on the event loop: XenbusFrontend
 *   toolstack.ts  createDevice, destroyDevice
 *   state.ts      paths, reading, waiting for and switching states, key checks
 *
 * The synchronous frontends (myrifront, netfront) walk the frontend side in xenbus-sync.ts.
 * This file is only the list of what the rest of MyriXen may use.
 */

export {
  type BackendDeviceHooks,
  BackendDeviceWatcher,
  type WatchedDevice,
  XenbusBackend,
} from "./xenbus/backend.js";
export { type FrontendKeys, XenbusFrontend } from "./xenbus/frontend.js";
export {
  backendPath,
  DEFAULT_XENBUS_TIMEOUT_MS,
  frontendPath,
  onXenbusState,
  parseXenbusState,
  readXenbusState,
  switchXenbusState,
  type WaitForStateOptions,
  waitForXenbusState,
  type XenbusDeviceSpec,
  XenbusError,
} from "./xenbus/state.js";
export { createDevice, destroyDevice } from "./xenbus/toolstack.js";
