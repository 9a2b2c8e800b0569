// What the LBs of a cluster share about ACME, in the registry (the Registry seam: etcd with many
// hosts; an embedded store of the LB's own with one):
//   /corral-acme/certs/<host>        the certificate and its key (JSON CertRecord)
//   /corral-acme/locks/<host>        who is ordering it now (ephemeral: a dead host's lock goes with its lease)
//   /corral-acme/challenges/<token>  HTTP-01 key authorizations, for whichever LB the CA asks
//   /corral-acme/alpn/<host>         TLS-ALPN-01 challenge certificate + key (PEM)
// One host orders (the lock); every LB installs what appears under certs/ (the watch).
import type { KvBatch, Registry } from '../../agent/registry/registry.js';

export const ACME_PREFIX = '/corral-acme/';
const CERTS = `${ACME_PREFIX}certs/`;
const LOCKS = `${ACME_PREFIX}locks/`;
const CHALLENGES = `${ACME_PREFIX}challenges/`;
const ALPN = `${ACME_PREFIX}alpn/`;
/** A lock older than this is taken over (an order never takes this long). */
const STALE_LOCK_MS = 10 * 60_000;

export interface CertRecord {
  host: string;
  cert: string;
  key: string;
  notBefore: number;
  notAfter: number;
  /** The host whose LB ordered it, and when. */
  node: string;
  at: number;
}

export interface StoreEvents {
  cert(rec: CertRecord): void;
  challenge(token: string, keyAuth: string | undefined): void;
  alpn(host: string, pem: string | undefined): void;
}

const HOST = /^[a-z0-9.-]{1,253}$/;
const TOKEN = /^[A-Za-z0-9_-]{1,256}$/;

function certRecord(host: string, value: string): CertRecord | undefined {
  try {
    const r = JSON.parse(value) as CertRecord;
    if (r.host !== host || typeof r.cert !== 'string' || typeof r.key !== 'string' || typeof r.notAfter !== 'number' || typeof r.notBefore !== 'number') return undefined;
    return r;
  } catch {
    return undefined;
  }
}

export class AcmeStore {
  private stopWatch: (() => void) | undefined;

  constructor(readonly registry: Registry, private readonly node: string) {}

  /** Takes the order lock for host; false when another LB holds a fresh one. */
  async lock(host: string): Promise<{ ok: true } | { ok: false; holder: string }> {
    const key = LOCKS + host;
    const value = JSON.stringify({ node: this.node, at: Date.now() });
    const now = await this.registry.range(key);
    const held = now.kvs.find((kv) => kv.key === key);
    if (held) {
      let holder = '';
      let at = 0;
      try {
        ({ node: holder, at } = JSON.parse(held.value) as { node: string; at: number });
      } catch { /* unreadable: treat as stale */ }
      if (Date.now() - at < STALE_LOCK_MS) return { ok: false, holder: holder || 'another host' };
    }
    const rev = await this.registry.txn([{ put: key, value, ephemeral: true }], [{ key, modRevision: held?.modRevision ?? 0 }]);
    return rev === null ? { ok: false, holder: 'another host' } : { ok: true };
  }

  async unlock(host: string): Promise<void> {
    await this.registry.txn([{ delete: LOCKS + host }]);
  }

  async cert(host: string): Promise<CertRecord | undefined> {
    const r = await this.registry.range(CERTS + host);
    const kv = r.kvs.find((k) => k.key === CERTS + host);
    return kv ? certRecord(host, kv.value) : undefined;
  }

  async putCert(rec: CertRecord): Promise<void> {
    await this.registry.txn([{ put: CERTS + rec.host, value: JSON.stringify(rec) }]);
  }

  async putChallenge(token: string, keyAuth: string): Promise<void> {
    await this.registry.txn([{ put: CHALLENGES + token, value: keyAuth, ephemeral: true }]);
  }

  async deleteChallenge(token: string): Promise<void> {
    await this.registry.txn([{ delete: CHALLENGES + token }]);
  }

  async putAlpn(host: string, pem: string): Promise<void> {
    await this.registry.txn([{ put: ALPN + host, value: pem, ephemeral: true }]);
  }

  async deleteAlpn(host: string): Promise<void> {
    await this.registry.txn([{ delete: ALPN + host }]);
  }

  /** Everything there is now, then every change; again from scratch when the history is gone. */
  async follow(on: StoreEvents): Promise<void> {
    const apply = (key: string, value: string | undefined) => {
      if (key.startsWith(CERTS)) {
        const host = key.slice(CERTS.length);
        const rec = value === undefined || !HOST.test(host) ? undefined : certRecord(host, value);
        if (rec) on.cert(rec);
      } else if (key.startsWith(CHALLENGES)) {
        const token = key.slice(CHALLENGES.length);
        if (TOKEN.test(token)) on.challenge(token, value);
      } else if (key.startsWith(ALPN)) {
        const host = key.slice(ALPN.length);
        if (HOST.test(host)) on.alpn(host, value);
      }
    };
    const start = async () => {
      const r = await this.registry.range(ACME_PREFIX);
      for (const kv of r.kvs) apply(kv.key, kv.value);
      this.stopWatch = this.registry.watch(ACME_PREFIX, r.revision, (b: KvBatch) => {
        for (const e of b.events) apply(e.key, e.type === 'put' ? e.value : undefined);
      }, () => {
        this.stopWatch?.();
        void start();
      });
    };
    await start();
  }

  close(): void {
    this.stopWatch?.();
  }
}
