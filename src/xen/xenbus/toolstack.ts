/**
 * The toolstack's part of xenbus: creating a device (both directories, their cross
 * references and perms, both sides Initialising) and destroying it after Closed. Only dom0's
 * toolstack (the host) calls these.
 */

import { XenbusState } from "../abi.js";
import type { XenStoreClient, XenStorePerm } from "../xenstore.js";
import { backendPath, frontendPath, type XenbusDeviceSpec, XenbusError } from "./state.js";

/**
 * What the toolstack (dom0) does to give `frontDom` a device served by `backDom`: both
 * directories in state Initialising, the cross references, `online` = 1, and perms so that
 * each side owns its own directory and may read the other's.
 */
export async function createDevice(
  toolstack: XenStoreClient,
  spec: XenbusDeviceSpec,
): Promise<{ frontPath: string; backPath: string }> {
  const frontPath = frontendPath(spec.frontDom, spec.type, spec.devid);
  const backPath = backendPath(spec.backDom, spec.type, spec.frontDom, spec.devid);
  const frontPerms: XenStorePerm[] = [
    { dom: spec.frontDom, access: "n" },
    { dom: spec.backDom, access: "r" },
  ];
  const backPerms: XenStorePerm[] = [
    { dom: spec.backDom, access: "n" },
    { dom: spec.frontDom, access: "r" },
  ];
  await toolstack.transaction(async (tx) => {
    for (const p of [frontPath, backPath]) {
      if (await tx.exists(p)) {
        throw new XenbusError(
          "EEXIST",
          p,
          `${spec.type} device ${spec.devid} of domain ${spec.frontDom} already exists at ${p}; destroy it first`,
        );
      }
    }
    // Perms go on the directory first: keys written below it by the toolstack inherit them.
    await tx.mkdir(frontPath);
    await tx.setPerms(frontPath, frontPerms);
    await tx.write(`${frontPath}/backend`, backPath);
    await tx.write(`${frontPath}/backend-id`, String(spec.backDom));
    await tx.write(`${frontPath}/state`, String(XenbusState.Initialising));
    await tx.mkdir(backPath);
    await tx.setPerms(backPath, backPerms);
    await tx.write(`${backPath}/frontend`, frontPath);
    await tx.write(`${backPath}/frontend-id`, String(spec.frontDom));
    await tx.write(`${backPath}/online`, "1");
    await tx.write(`${backPath}/state`, String(XenbusState.Initialising));
  });
  return { frontPath, backPath };
}

/** Removes both directories of a device (the toolstack's last step after Closed). */
export async function destroyDevice(toolstack: XenStoreClient, spec: XenbusDeviceSpec): Promise<void> {
  const frontPath = frontendPath(spec.frontDom, spec.type, spec.devid);
  const backPath = backendPath(spec.backDom, spec.type, spec.frontDom, spec.devid);
  // The backend's per-domain directory goes too once empty: a host that runs for weeks must
  // not keep a node for every domain it ever ran.
  const perDomain = backPath.slice(0, backPath.lastIndexOf("/"));
  await toolstack.transaction(async (tx) => {
    for (const p of [frontPath, backPath]) if (await tx.exists(p)) await tx.rm(p);
    if ((await tx.exists(perDomain)) && (await tx.directory(perDomain)).length === 0) await tx.rm(perDomain);
  });
}
