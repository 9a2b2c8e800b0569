// The registry seam: a revisioned key-value store, the shape etcd has. Two implementations:
// embedded (one host, state on disk) and etcd (many hosts). Callers never branch on which.
import type { Logger } from '../../api/log.js';

export interface KeyValue {
  key: string;
  value: string;
  modRevision: number;
}

export type KvEvent =
  | { type: 'put'; key: string; value: string }
  | { type: 'delete'; key: string };

/** Every change made by one transaction, at one revision. */
export interface KvBatch {
  revision: number;
  events: KvEvent[];
}

/**
 * A put marked ephemeral lives only as long as this process keeps its registry session (the
 * etcd lease, TTL --lease-ttl): host records and this host's endpoints vanish when the host
 * dies. The embedded registry has one host, so it treats ephemeral puts as ordinary ones.
 */
export type TxnOp = { put: string; value: string; ephemeral?: boolean } | { delete: string };

/** A guard on a transaction: key must have this modRevision (0 = must not exist). */
export interface Compare {
  key: string;
  modRevision: number;
}

export interface RangeResult {
  revision: number;
  kvs: KeyValue[];
}

export interface Registry {
  /** "embedded" | "etcd", for status output. */
  readonly kind: string;
  open(): Promise<void>;
  close(): Promise<void>;
  /** Every key under prefix, with the revision the read was made at. */
  range(prefix: string): Promise<RangeResult>;
  /**
   * Applies ops atomically as one revision and returns it; null when a compare failed.
   * Ops that change nothing (delete of a missing key, put of the same value) are dropped;
   * when nothing is left the current revision is returned and no revision is made.
   */
  txn(ops: TxnOp[], compares?: Compare[]): Promise<number | null>;
  /**
   * Calls onBatch for every change under prefix after fromRevision, in order. If history
   * before fromRevision is gone, onReset is called and the caller must range() again.
   */
  watch(prefix: string, fromRevision: number, onBatch: (b: KvBatch) => void, onReset: () => void): () => void;
  /**
   * The keys under prefix as they were at a past revision; null when that history is gone
   * (compacted). Lets a restarted agent resume its consumers from their revision.
   */
  keysAt?(prefix: string, revision: number): Promise<Set<string> | null>;
  /** Whether the registry can be reached now; when not, what this process holds is stale. */
  health(): RegistryHealth;
  /**
   * Starts what keeps the store healthy over time, shared with the other hosts (etcd: one elected
   * agent compacts old revisions); the embedded registry bounds its own history and needs none.
   */
  maintain?(node: string, log: Logger): void;
}

export interface RegistryHealth {
  connected: boolean;
  /** Why not, in one line ("" when connected). */
  error: string;
  /** When the registry was last known reachable (ms since epoch). */
  sinceMs: number;
}

export class RegistryError extends Error {}

/** The registry refused a write for this client's identity (etcd's RBAC): says who, which keys, what to do. */
export class PermissionDenied extends RegistryError {
  constructor(readonly user: string, readonly keys: string[], hint: string) {
    super(`etcd refused user "${user}" writing ${keys.join(', ')}: permission denied; ${hint}`);
  }
}
