// The etcd registry: every host's agent points at the same etcd cluster. Revisions are etcd's own;
// a transaction is one etcd txn (compares on mod_revision, 0 = absent); watches resume from the
// last delivered revision after a reconnect and ask the caller to start over after compaction.
// Ephemeral puts are bound to one lease per process, kept alive here: when the host dies, its
// records leave the registry after the lease TTL.
import { X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { Etcd3, EtcdAuthenticationFailedError, EtcdInvalidAuthTokenError, EtcdPermissionDeniedError, type IOptions, type Lease, type Namespace, type Watcher } from 'etcd3';
import type { Compare, KeyValue, KvBatch, KvEvent, RangeResult, Registry, RegistryHealth, TxnOp } from './registry.js';
import { PermissionDenied, RegistryError } from './registry.js';
import type { Logger } from '../../api/log.js';
import { Compactor } from './compaction.js';
import { keyWriter } from '../catalog.js';

export interface EtcdTls {
  ca: string;     // PEM file paths
  cert?: string;
  key?: string;
}

/** etcd password authentication: the user, and a file holding its password (readable by its owner only). */
export interface EtcdAuth {
  user: string;
  passwordFile: string;
}

export interface EtcdOptions {
  endpoints: string[];         // host:port
  tls?: EtcdTls;
  /** With etcd's auth on: this user; without it and with a client certificate, etcd takes the certificate's CN. */
  auth?: EtcdAuth;
  leaseTtlS?: number;          // default 10
  /** How long an RPC may wait for a reachable member before failing (default 5 s). */
  rpcTimeoutMs?: number;
  /** How often history is compacted, and how much is kept (default 5 min). */
  compactEveryMs?: number;
  /**
   * An open client to share (the fleet simulator runs 1,000 registries in one process): this
   * registry keeps its own lease and watches on it and leaves it open on close().
   */
  client?: Etcd3;
}

/** "etcd://h1:2379,h2:2379" -> ["h1:2379", "h2:2379"]; throws with what is accepted. */
export function parseEtcdSpec(spec: string): string[] {
  const list = spec.replace(/^etcd:\/\//, '').split(',').map((s) => s.trim()).filter(Boolean);
  if (list.length === 0 || list.some((h) => !/^(\[[0-9a-fA-F:.]+\]|[^:/\s]+):\d{1,5}$/.test(h))) {
    throw new RegistryError(`--registry "${spec}" is not etcd://HOST:PORT[,HOST:PORT...] (for example etcd://10.0.0.1:2379,10.0.0.2:2379)`);
  }
  return list;
}

/** --etcd-ca/--etcd-cert/--etcd-key read for the client; throws naming the flag to fix. */
export function tlsCredentials(tls: EtcdTls): NonNullable<IOptions['credentials']> {
  const read = (what: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new RegistryError(`cannot read the etcd ${what} ${path}: ${(err as Error).message}; check --etcd-${what === 'CA' ? 'ca' : what}`);
    }
  };
  return {
    rootCertificate: read('CA', tls.ca),
    ...(tls.cert ? { certChain: read('cert', tls.cert) } : {}),
    ...(tls.key ? { privateKey: read('key', tls.key) } : {}),
  };
}

/** The password in an --etcd-password-file: refused when other users may read the file. */
export function readPassword(path: string): string {
  let text: string;
  try {
    if ((statSync(path).mode & 0o077) !== 0) throw new RegistryError(`--etcd-password-file ${path} may be read by other users: chmod 600 it`);
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (err instanceof RegistryError) throw err;
    throw new RegistryError(`cannot read --etcd-password-file ${path}: ${(err as Error).message}`);
  }
  const password = text.replace(/\r?\n$/, '');
  if (!password) throw new RegistryError(`--etcd-password-file ${path} is empty`);
  return password;
}

/** The first key after every key with this prefix (etcd's range_end for a prefix). */
function prefixEnd(prefix: string): Buffer {
  const b = Buffer.from(prefix);
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i]! < 0xff) {
      const end = b.subarray(0, i + 1);
      end[i]! += 1;
      return Buffer.from(end);
    }
  }
  return Buffer.from([0]);
}

interface Current { value: string; modRevision: number; lease: string }

/** How long calls must keep failing, with no success in between, before the registry counts as unreachable. */
const FAIL_GRACE_MS = 2_000;

export class EtcdRegistry implements Registry {
  readonly kind = 'etcd';
  private client: Etcd3 | undefined;
  private lease: Lease | undefined;
  private leaseId: Promise<string> | undefined;
  /** A reattach loop is running (one at most: every lease it fails to grant is 'lost' too). */
  private reattaching = false;
  /** Ephemeral keys this process wrote, re-attached to a new lease when the old one is lost. */
  private readonly ephemeral = new Map<string, string>();
  private readonly watchers = new Set<Watcher>();
  /** Where watches are made: the client, or a fresh view of it after etcd refused a stale token. */
  private watchSource: Namespace | undefined;
  private state: RegistryHealth = { connected: false, error: 'not opened', sinceMs: 0 };
  private closed = false;
  /** When calls started failing with no success since (0: the last call succeeded), and why. */
  private failingSince = 0;
  private failError = '';
  private readonly ttl: number;
  private readonly timeoutMs: number;
  compactor: Compactor | undefined;

  constructor(private readonly opts: EtcdOptions) {
    this.ttl = opts.leaseTtlS ?? 10;
    this.timeoutMs = opts.rpcTimeoutMs ?? 5000;
  }

  async open(): Promise<void> {
    if (this.opts.client) {
      this.client = this.opts.client;
      this.ok();
      return;
    }
    const o: IOptions = {
      hosts: this.opts.endpoints.map((h) => `${this.opts.tls ? 'https' : 'http'}://${h}`),
      dialTimeout: 3000,
      // One watch response covers every change since the last: after a pause it can be tens of MB,
      // and so can the first range of a large registry. gRPC's 4 MB default would drop it silently.
      // No channelz: its per-call bookkeeping is paid on every watch response and nobody reads it.
      grpcOptions: { 'grpc.max_receive_message_length': -1, 'grpc.enable_channelz': 0 },
      // Unary calls only: a deadline on the lease keep-alive and watch streams would cut and reopen
      // them every few seconds.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + this.timeoutMs }),
    };
    if (this.opts.tls) o.credentials = tlsCredentials(this.opts.tls);
    if (this.opts.auth) o.auth = { username: this.opts.auth.user, password: readPassword(this.opts.auth.passwordFile) };
    this.client = new Etcd3(o);
    try {
      await this.client.kv.range({ key: Buffer.from('/corral/'), limit: 1, keys_only: true });
    } catch (err) {
      this.client.close();
      const msg = (err as Error).message.replace(/\s*\n\s*/g, ' ');
      throw new RegistryError(`cannot reach etcd at ${this.opts.endpoints.join(',')}: ${msg}; ${this.authHint(err as Error) ?? this.tlsHint(msg) ?? 'check that etcd runs and --registry names it'}`);
    }
    this.ok();
  }

  /** Who etcd takes this client for: --etcd-user, else the client certificate's CN ('' when neither). */
  get user(): string {
    if (this.opts.auth) return this.opts.auth.user;
    if (!this.opts.tls?.cert) return '';
    try {
      return /(?:^|\n)CN=([^\n]*)/.exec(new X509Certificate(readFileSync(this.opts.tls.cert)).subject)?.[1] ?? '';
    } catch {
      return '';
    }
  }

  /** What to fix when etcd refused who this client is, if it did. */
  private authHint(err: Error): string | undefined {
    if (err instanceof EtcdAuthenticationFailedError) return `etcd refused user "${this.user}" with that password: check --etcd-user and --etcd-password-file`;
    if (err instanceof EtcdPermissionDeniedError || /user name is empty|permission denied|invalid auth token/i.test(err.message)) {
      return `etcd's auth is on and ${this.user ? `user "${this.user}"` : 'this client (no --etcd-user, no client certificate CN)'} may not read /corral/: give --etcd-user and --etcd-password-file (or a client certificate whose CN is the user), made by \`corral etcd-init\``;
    }
    return undefined;
  }

  /** What to fix when the first call failed in the TLS handshake, if it did. */
  private tlsHint(msg: string): string | undefined {
    if (!this.opts.tls) return undefined;
    if (/certificate.required|bad.certificate|unknown.ca|handshake.failure|alert/i.test(msg)) {
      return 'etcd refused this client: give --etcd-cert and --etcd-key, a client certificate signed by a CA etcd trusts (its --trusted-ca-file)';
    }
    if (/verify|self.signed|issuer|certificate|altnames|SSL|TLS/i.test(msg)) {
      return "etcd's certificate is not signed by the CA in --etcd-ca, or not issued for this address: check --etcd-ca and the certificate's subjectAltName";
    }
    return undefined;
  }

  /** One agent of the fleet compacts etcd's history (compaction.ts). */
  maintain(node: string, log: Logger): void {
    this.compactor ??= new Compactor(this, node, this.opts.compactEveryMs ?? 300_000, log);
    this.compactor.start();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.compactor?.stop();
    for (const w of this.watchers) void w.cancel().catch(() => {});
    this.watchers.clear();
    // A clean stop leaves the ephemeral records to expire with the lease: a restart within the
    // TTL takes them over, so a rolling restart does not flap the host out of every peer.
    this.lease?.release();
    if (!this.opts.client) this.client?.close();
  }

  health(): RegistryHealth {
    // A failure counts once no call has succeeded for FAIL_GRACE_MS after it: one call that hit a
    // dead member (or timed out on a starved machine) while the rest of the cluster answers is
    // not "disconnected", and `corral status` would otherwise flap to STALE for a second.
    if (this.state.connected && this.failingSince > 0 && Date.now() - this.failingSince >= FAIL_GRACE_MS) {
      this.state = { connected: false, error: this.failError, sinceMs: this.state.sinceMs };
    }
    return { ...this.state };
  }

  async range(prefix: string): Promise<RangeResult> {
    const r = await this.rpc(() => this.kv().range({ key: Buffer.from(prefix), range_end: prefixEnd(prefix) }));
    const kvs: KeyValue[] = r.kvs.map((kv) => ({ key: kv.key.toString(), value: kv.value.toString(), modRevision: Number(kv.mod_revision) }));
    return { revision: Number(r.header.revision), kvs };
  }

  async keysAt(prefix: string, revision: number): Promise<Set<string> | null> {
    const r = await this.rpc(() => this.kv().range({ key: Buffer.from(prefix), range_end: prefixEnd(prefix), revision: String(revision), keys_only: true }).catch((err: Error) => {
      // etcd answered: that revision's history is gone (or not made yet), which is no failure.
      if (/required revision (has been compacted|is a future revision)/.test(err.message)) return null;
      throw err;
    }));
    return r && new Set(r.kvs.map((kv) => kv.key.toString()));
  }

  async txn(ops: TxnOp[], compares: Compare[] = []): Promise<number | null> {
    const keys = [...new Set([...ops.map((o) => ('put' in o ? o.put : o.delete)), ...compares.map((c) => c.key)])];
    const wantsLease = ops.some((o) => 'put' in o && o.ephemeral);
    const leaseId = wantsLease ? await this.leaseID() : '0';
    for (let attempt = 0; attempt < 20; attempt++) {
      // Read what the keys hold now, to drop no-op changes as the seam promises...
      const read = await this.rpc(() => this.kv().txn({ success: keys.map((k) => ({ request_range: { key: Buffer.from(k) } })) }));
      const cur = new Map<string, Current>();
      read.responses.forEach((r, i) => {
        const kv = r.response_range.kvs[0];
        if (kv) cur.set(keys[i]!, { value: kv.value.toString(), modRevision: Number(kv.mod_revision), lease: String(kv.lease) });
      });
      for (const c of compares) if ((cur.get(c.key)?.modRevision ?? 0) !== c.modRevision) return null;
      const effective: TxnOp[] = ops.filter((o) => {
        if ('delete' in o) return cur.has(o.delete);
        const now = cur.get(o.put);
        return !now || now.value !== o.value || now.lease !== (o.ephemeral ? leaseId : '0');
      });
      if (effective.length === 0) {
        this.remember(ops);
        return Number(read.header.revision);
      }
      // ...then write only if none of them changed since (etcd's own compare, atomically).
      const res = await this.rpc(() => this.kv().txn({
        compare: keys.map((k) => ({ key: Buffer.from(k), target: 'Mod', result: 'Equal', mod_revision: cur.get(k)?.modRevision ?? 0 })),
        success: effective.map((o) => ('put' in o
          ? { request_put: { key: Buffer.from(o.put), value: Buffer.from(o.value), lease: o.ephemeral ? leaseId : 0 } }
          : { request_delete_range: { key: Buffer.from(o.delete) } })),
      }), effective.map((o) => ('put' in o ? o.put : o.delete)));
      if (res.succeeded) {
        this.remember(ops);
        return Number(res.header.revision);
      }
    }
    throw new RegistryError(`keys ${keys.join(', ')} kept changing under this transaction; try again`);
  }

  watch(prefix: string, fromRevision: number, onBatch: (b: KvBatch) => void, onReset: () => void): () => void {
    let last = fromRevision;
    let done = false;
    const source = (this.watchSource ??= this.client!);
    const w = source.watch().prefix(prefix).startRevision(String(fromRevision + 1)).watcher();
    this.watchers.add(w);
    const stop = () => {
      if (done) return;
      done = true;
      this.watchers.delete(w);
      void w.cancel().catch(() => {});
    };
    w.on('connected', () => this.ok());
    w.on('disconnected', (err) => this.fail(err));
    w.on('data', (res) => {
      this.ok();
      let batch: KvBatch | undefined;
      for (const e of res.events) {
        const rev = Number(e.kv.mod_revision);
        if (rev <= last) continue; // already delivered before a reconnect
        if (!batch || batch.revision !== rev) {
          if (batch) onBatch(batch);
          batch = { revision: rev, events: [] };
        }
        const key = e.kv.key.toString();
        const ev: KvEvent = e.type === 'Put' ? { type: 'put', key, value: e.kv.value.toString() } : { type: 'delete', key };
        batch.events.push(ev);
      }
      if (batch) {
        last = batch.revision;
        onBatch(batch);
      }
    });
    // etcd cancels a watch whose start revision was compacted away: the caller ranges again.
    // It also cancels one whose stream carries a token it no longer knows (expired, or etcd
    // restarted): etcd3 keeps that stream and queues every later watch behind the refused one,
    // so watches move to a new watch stream, which authenticates again (the caller's range
    // refreshes the token first).
    w.on('error', (err: Error) => {
      if (done || this.closed) return;
      if (err instanceof EtcdInvalidAuthTokenError && this.watchSource === source) this.watchSource = this.client!.namespace('');
      stop();
      onReset();
    });
    return stop;
  }

  /** Compacts history up to revision (tests, and operators through etcdctl, do this). */
  async compact(revision: number): Promise<void> {
    await this.rpc(() => this.kv().compact({ revision, physical: true }));
  }

  private kv() {
    if (!this.client) throw new RegistryError('the etcd registry is not open');
    return this.client.kv;
  }

  private remember(ops: TxnOp[]): void {
    for (const o of ops) {
      if ('put' in o && o.ephemeral) this.ephemeral.set(o.put, o.value);
      else this.ephemeral.delete('put' in o ? o.put : o.delete);
    }
  }

  private leaseID(): Promise<string> {
    if (this.leaseId) return this.leaseId;
    const lease = this.client!.lease(this.ttl);
    this.lease = lease;
    lease.on('keepaliveSucceeded', () => this.ok());
    (lease as unknown as NodeJS.EventEmitter).on('keepaliveFailed', (err: Error) => this.fail(err));
    lease.on('lost', () => {
      if (this.closed || this.lease !== lease) return;
      this.leaseId = undefined;
      if (!this.reattaching) void this.reattach();
    });
    // etcd3's grant() resolves with the error when the grant fails (it does not reject).
    this.leaseId = lease.grant().then((id: unknown) => {
      if (id instanceof Error) throw id;
      return String(id);
    });
    this.leaseId.catch(() => {
      if (this.lease === lease) this.leaseId = undefined;
    });
    return this.leaseId;
  }

  /** After the lease was lost (etcd unreachable longer than the TTL): a new lease, same records. */
  private async reattach(): Promise<void> {
    this.reattaching = true;
    try {
      for (let delay = 200; !this.closed; delay = Math.min(delay * 2, 3000)) {
        try {
          const id = await this.leaseID();
          if (this.ephemeral.size === 0) return;
          await this.rpc(() => this.kv().txn({
            success: [...this.ephemeral].map(([k, v]) => ({ request_put: { key: Buffer.from(k), value: Buffer.from(v), lease: id } })),
          }));
          return;
        } catch {
          await new Promise((r) => setTimeout(r, delay).unref());
        }
      }
    } finally {
      this.reattaching = false;
    }
  }

  /** One call; with `writes`, etcd refusing them for this user is a PermissionDenied naming them. */
  private async rpc<T>(fn: () => Promise<T>, writes?: string[]): Promise<T> {
    try {
      const r = await fn();
      this.ok();
      return r;
    } catch (err) {
      if (writes && err instanceof EtcdPermissionDeniedError) {
        this.ok(); // etcd answered: it is reachable, this user may just not write there
        // etcd does not say which key it refused: name those outside this user's own host prefix.
        const foreign = writes.filter((k) => keyWriter(k) !== this.user);
        const named = foreign.length ? foreign : writes;
        throw new PermissionDenied(this.user || '(none)', named, deniedHint(named));
      }
      this.fail(err as Error);
      throw new RegistryError(`etcd at ${this.opts.endpoints.join(',')} did not answer: ${(err as Error).message}`);
    }
  }

  private ok(): void {
    this.failingSince = 0;
    // sinceMs of a connected registry: when it last answered.
    this.state = { connected: true, error: '', sinceMs: Date.now() };
  }

  private fail(err: Error): void {
    if (!this.state.connected) return;
    if (this.failingSince === 0) this.failingSince = Date.now();
    this.failError = err.message;
  }
}

/** What to do about a refused write, by whose keys they were. */
function deniedHint(keys: string[]): string {
  if (keys.some((k) => k.startsWith('/corral/services/'))) {
    return 'service records belong to the corral-operator role: change colors with `corral switch|weight|rollback --registry etcd://… --etcd-user <operator> --etcd-password-file <file>` (SECURITY.md)';
  }
  return "a host's etcd user may write only its own host's keys (role corral-host-<host>, made by `corral etcd-init`; SECURITY.md)";
}
