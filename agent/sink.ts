// The seam between sources of endpoints (Docker, `corral register`, CNI) and the registry.
import type { Endpoint } from '../api/types.js';

export interface EndpointSink {
  /** Make the registry hold exactly `endpoints` for this origin on this node (after a (re)connect). */
  sync(origin: string, endpoints: Endpoint[]): Promise<void>;
  /** Create or replace one endpoint. */
  upsert(endpoint: Endpoint): Promise<void>;
  /**
   * The endpoint is going away: mark it draining at once (no new requests, in-flight ones
   * finish), then remove it after its drain time. `immediate` removes it now (container died).
   */
  remove(id: string, opts?: { immediate?: boolean }): Promise<void>;
  /** Update health of one endpoint owned by this node; a no-op if unchanged or gone. */
  setHealth(id: string, healthy: boolean, reason: string): Promise<void>;
}
