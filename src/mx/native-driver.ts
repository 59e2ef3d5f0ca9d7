/**
 * The native MX driver: how a process of the driver domain's OS (createDomain({ native: true }),
 * Host.startNative) reaches the NIC — the reference point the bypass path is measured against.
 * Each method is one synchronous call to the driver domain's native service, which answers with
 * SharedArrayBuffers directly (no grants inside one OS). The data path is then the same as a
 * guest's: window, interrupt page and channels, with no driver involved.
 */

import {
  allocGuestBuffer,
  type DriverChannel,
  type DriverConnection,
  type DriverEndpoint,
  type DriverRegion,
  freeGuestBuffer,
  type MxDriver,
  MxDriverError,
} from "../myrixen/driver-abi.js";
import type {
  MyriInfo,
  NativeAttachReply,
  NativeConnectReply,
  NativeRequest,
  NativeServiceEndpoint,
} from "../myrixen/protocol.js";
import type { Guest } from "../xen/guest/guest.js";
import { SyncCallClient, SyncCallFailed } from "../xen/sync-call.js";

function fail(code: string, message: string): MxDriverError {
  return new MxDriverError(code, `${code}: ${message}`);
}

export class NativeDriver implements MxDriver {
  readonly path = "native";
  readonly nicId: number;
  /** Endpoint contexts of the NIC. */
  readonly maxEndpoints: number;
  private readonly rpc: Pick<SyncCallClient<NativeRequest>, "call">;
  private readonly open = new Set<number>();
  private finalized = false;

  /** `endpoint` defaults to the guest's own link to the service (Host.startNative gives it one). */
  constructor(
    private readonly guest: Guest,
    endpoint?: NativeServiceEndpoint,
  ) {
    if (!guest.native)
      throw fail(
        "MX_NO_DRIVER",
        "NativeDriver is for native processes; a guest VM uses myrifront (openDriver picks it)",
      );
    const toMx = (errno: string, message: string) =>
      new MxDriverError(errno.startsWith("MX_") ? errno : "MX_FAILURE", message);
    if (endpoint) {
      if (!endpoint.port || !(endpoint.replyWord instanceof SharedArrayBuffer))
        throw fail("MX_NO_DRIVER", "the native service endpoint needs a port and a replyWord");
      this.rpc = new SyncCallClient<NativeRequest>(endpoint.port, endpoint.replyWord, toMx);
    } else {
      // The runtime keeps the link's port out of the program's reach; the guest calls through it.
      this.rpc = {
        call: <T>(req: NativeRequest): T => {
          try {
            return guest.nativeCall<T>(req);
          } catch (e) {
            if (e instanceof SyncCallFailed) throw toMx(e.errno, e.message);
            if (e instanceof TypeError)
              throw fail("MX_NO_DRIVER", "no native service link; start the process with Host.startNative");
            throw e;
          }
        },
      };
    }
    const r = this.call<NativeAttachReply>({ op: "attach", memory: guest.memory.ram });
    this.nicId = r.nicId;
    this.maxEndpoints = r.maxEndpoints;
  }

  private call<T>(req: NativeRequest): T {
    if (this.finalized) throw fail("MX_NOT_INITIALIZED", "this driver was finalized");
    return this.rpc.call<T>(req);
  }

  openEndpoint(endpointId: number, key: number): DriverEndpoint {
    const r = this.call<DriverEndpoint>({ op: "open_endpoint", endpointId, key });
    this.open.add(r.endpointId);
    return r;
  }

  closeEndpoint(endpointId: number): void {
    this.call({ op: "close_endpoint", endpointId });
    this.open.delete(endpointId);
  }

  registerRegion(endpointId: number, bytes: Uint8Array, access: number): DriverRegion {
    if (!(bytes instanceof Uint8Array) || bytes.buffer !== this.guest.memory.ram)
      throw fail(
        "MX_BAD_SEG_MEM",
        "registerRegion: the buffer must be a view of this process's memory (allocBuffer, guest.memory)",
      );
    return this.call<DriverRegion>({
      op: "register_region",
      endpointId,
      offset: bytes.byteOffset,
      length: bytes.byteLength,
      access,
    });
  }

  deregisterRegion(endpointId: number, regionId: number): void {
    this.call({ op: "deregister_region", endpointId, regionId });
  }

  connect(endpointId: number, peerNic: number, peerEndpoint: number, key: number): DriverConnection {
    return this.call<NativeConnectReply>({ op: "connect", endpointId, peerNic, peerEndpoint, key });
  }

  acceptChannel(
    endpointId: number,
    channelId: number,
  ): DriverChannel & { peerNic: number; peerEndpoint: number; peerSession: number } {
    return this.call({ op: "accept_channel", endpointId, channelId });
  }

  allocBuffer(length: number): Uint8Array {
    return allocGuestBuffer(this.guest.memory, length);
  }

  freeBuffer(buffer: Uint8Array): void {
    freeGuestBuffer(this.guest.memory, buffer);
  }

  info(): MyriInfo {
    return this.call<MyriInfo>({ op: "info" });
  }

  finalize(): void {
    if (this.finalized) return;
    for (const id of [...this.open]) {
      try {
        this.closeEndpoint(id);
      } catch {
        // already gone
      }
    }
    this.finalized = true;
  }
}
