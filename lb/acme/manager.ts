// ACME (RFC 8555) certificates for the LB's routes, on the LB's main thread: which hosts need one
// (routes labelled corral.http.tls=acme, or every exact host with --acme-all-hosts), ordering
// through acme-client with HTTP-01 or TLS-ALPN-01 answered by the LB itself, renewal well before
// expiry, back-off after failures, and sharing through the registry (store.ts): one LB orders a
// host under a lock, every LB installs the result into its local files (files.ts), which every
// thread serves. A failure never removes a certificate: the old one is served until a new one comes.
import { get as httpGet } from 'node:http';
import { Agent as HttpsAgent, get as httpsGet } from 'node:https';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as acme from 'acme-client';
import { Counter, Gauge, type Registry as PromRegistry } from 'prom-client';
import type { Logger } from '../../api/log.js';
import type { AcmeOptions } from '../../api/options.js';
import type { AcmeStore, CertRecord } from './store.js';
import { type AcmeDirs, removeFile, writeAtomic } from './files.js';
import { STATUS_FILE } from './report.js';

/** The longest back-off after failures. */
const MAX_BACKOFF_MS = 6 * 3_600_000;
/** How often due renewals and retries are looked for. */
const TICK_MS = 5_000;
/** Time for the other LBs to see a challenge in the registry before the CA is told to look. */
const SPREAD_MS = 500;

/** One host's state, as status and metrics show it. */
export interface HostAcme {
  host: string;
  /** valid: a certificate not yet due · renewing / ordering: this LB orders now · waiting: another LB does · failed: the last order failed (the old certificate, if any, is served). */
  state: 'pending' | 'valid' | 'ordering' | 'renewing' | 'waiting' | 'failed';
  notAfter: string;
  renewAt: string;
  orderedBy: string;
  failures: number;
  lastError: string;
  nextTryAt: string;
}

interface HostState {
  failures: number;
  lastError: string;
  nextTryAt: number;
  busy: boolean;
  waitingFor: string;
}

const iso = (ms: number) => (ms > 0 ? new Date(ms).toISOString() : '');

export class AcmeManager {
  private client: acme.Client | undefined;
  private readonly certs = new Map<string, CertRecord>();
  private readonly hosts = new Map<string, HostState>();
  private wanted = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private soon: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly orders: Counter<'result'>;
  private readonly expiry: Gauge<'host'>;
  private readonly failing: Gauge<'host'>;

  constructor(
    private readonly o: AcmeOptions,
    private readonly dirs: AcmeDirs,
    private readonly store: AcmeStore,
    private readonly node: string,
    private readonly log: Logger,
    metrics: PromRegistry,
  ) {
    this.orders = new Counter({ name: 'corral_lb_acme_orders_total', help: 'ACME orders this LB made, by result (ok, failed)', labelNames: ['result'], registers: [metrics] });
    this.expiry = new Gauge({ name: 'corral_lb_acme_certificate_expiry_seconds', help: 'When the ACME certificate of a host expires (unix seconds)', labelNames: ['host'], registers: [metrics] });
    this.failing = new Gauge({ name: 'corral_lb_acme_failures', help: 'Failed ACME orders in a row for a host (0: fine)', labelNames: ['host'], registers: [metrics] });
  }

  async start(): Promise<void> {
    const accountKey = await this.accountKey();
    const ca = this.o.ca ? readFileSync(this.o.ca) : undefined;
    // acme-client's own HTTP client: our CA (a test CA such as pebble's), short retries (we back off ourselves).
    if (ca) acme.axios.defaults.httpsAgent = new HttpsAgent({ ca });
    acme.axios.defaults.timeout = 30_000;
    (acme.axios.defaults as unknown as { acmeSettings: { retryMaxAttempts: number; retryDefaultDelay: number } }).acmeSettings.retryMaxAttempts = 2;
    (acme.axios.defaults as unknown as { acmeSettings: { retryDefaultDelay: number } }).acmeSettings.retryDefaultDelay = 1;
    this.client = new acme.Client({ directoryUrl: this.o.directory, accountKey });
    await this.store.registry.open();
    await this.store.follow({
      cert: (rec) => this.install(rec),
      challenge: (token, keyAuth) => (keyAuth === undefined ? removeFile(join(this.dirs.challenges, token)) : writeAtomic(join(this.dirs.challenges, token), keyAuth)),
      alpn: (host, pem) => (pem === undefined ? removeFile(join(this.dirs.alpn, `${host}.pem`)) : writeAtomic(join(this.dirs.alpn, `${host}.pem`), pem)),
    });
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
    this.tick();
  }

  /** The account key: made once, 0600 in the state dir. */
  private async accountKey(): Promise<Buffer> {
    const file = join(this.dirs.root, 'account.key');
    if (existsSync(file)) {
      chmodSync(file, 0o600);
      return readFileSync(file);
    }
    const key = await acme.crypto.createPrivateEcdsaKey();
    writeFileSync(file, key, { mode: 0o600 });
    return key;
  }

  /** The hosts routes need certificates for now (after every applied revision). */
  want(hosts: Set<string>): void {
    const changed = hosts.size !== this.wanted.size || [...hosts].some((h) => !this.wanted.has(h));
    this.wanted = hosts;
    if (changed && this.timer !== undefined) {
      clearTimeout(this.soon);
      this.soon = setTimeout(() => this.tick(), 100);
      this.soon.unref();
    }
  }

  private renewAt(rec: CertRecord): number {
    const before = this.o.renewBeforeMs > 0 ? this.o.renewBeforeMs : (rec.notAfter - rec.notBefore) / 3;
    return rec.notAfter - before;
  }

  private stateOf(host: string): HostState {
    let st = this.hosts.get(host);
    if (!st) this.hosts.set(host, (st = { failures: 0, lastError: '', nextTryAt: 0, busy: false, waitingFor: '' }));
    return st;
  }

  private tick(): void {
    if (this.closed) return;
    const now = Date.now();
    for (const host of this.wanted) {
      const rec = this.certs.get(host);
      if (rec && now < this.renewAt(rec)) continue;
      const st = this.stateOf(host);
      if (st.busy || now < st.nextTryAt) continue;
      void this.order(host, st);
    }
  }

  private async order(host: string, st: HostState): Promise<void> {
    st.busy = true;
    let locked = false;
    try {
      const lock = await this.store.lock(host);
      if (!lock.ok) {
        st.waitingFor = lock.holder;
        return;
      }
      locked = true;
      st.waitingFor = '';
      // Another LB may have renewed it just before we took the lock.
      const current = await this.store.cert(host);
      if (current) this.install(current);
      if (current && Date.now() < this.renewAt(current)) return;
      this.log.info({ host, renewal: !!current, directory: this.o.directory, challenge: this.o.challenge }, 'ordering an ACME certificate');
      const [key, csr] = await acme.crypto.createCsr({ commonName: host, altNames: [host] }, await acme.crypto.createPrivateEcdsaKey());
      const cert = await this.client!.auto({
        csr,
        email: this.o.email || undefined,
        termsOfServiceAgreed: true,
        challengePriority: [this.o.challenge],
        // The CA checks; a self-check from here would need the name to resolve to this host.
        skipChallengeVerification: true,
        challengeCreateFn: (authz, challenge, keyAuth) => this.present(authz, challenge, keyAuth),
        challengeRemoveFn: (authz, challenge) => this.cleanUp(authz, challenge),
      });
      const info = acme.crypto.readCertificateInfo(cert);
      const rec: CertRecord = { host, cert, key: key.toString(), notBefore: info.notBefore.getTime(), notAfter: info.notAfter.getTime(), node: this.node, at: Date.now() };
      await this.store.putCert(rec);
      this.install(rec);
      st.failures = 0;
      st.lastError = '';
      st.nextTryAt = 0;
      this.failing.set({ host }, 0);
      this.orders.inc({ result: 'ok' });
      this.log.info({ host, notAfter: iso(rec.notAfter) }, 'ACME certificate issued');
      this.report();
    } catch (err) {
      st.failures++;
      st.lastError = await this.explain(err);
      const backoff = Math.min(MAX_BACKOFF_MS, this.o.retryMs * 2 ** (st.failures - 1));
      st.nextTryAt = Date.now() + backoff;
      this.failing.set({ host }, st.failures);
      this.orders.inc({ result: 'failed' });
      const old = this.certs.get(host);
      this.report();
      this.log.error({ host, err: st.lastError, failures: st.failures, retryInS: Math.round(backoff / 1000), serving: old ? `the previous certificate (until ${iso(old.notAfter)})` : 'no certificate yet' }, 'ACME order failed; trying again after the back-off');
    } finally {
      if (locked) await this.store.unlock(host).catch(() => undefined);
      st.busy = false;
    }
  }

  /**
   * One line saying why an order failed. acme-client loses the cause of a network error (it
   * reports "Cannot read properties of undefined"), so then the directory is asked directly.
   */
  private async explain(err: unknown): Promise<string> {
    const msg = oneLine(err);
    if (!(err instanceof TypeError)) return msg;
    const url = this.o.directory;
    const reach = await new Promise<string>((resolve) => {
      const req = (url.startsWith('https:') ? httpsGet : httpGet)(url, { agent: url.startsWith('https:') ? (acme.axios.defaults.httpsAgent as HttpsAgent | undefined) : undefined, timeout: 10_000 }, (res) => {
        res.resume();
        resolve(res.statusCode === 200 ? '' : `it answers HTTP ${res.statusCode}`);
      });
      req.on('timeout', () => req.destroy(new Error('timed out after 10 s')));
      req.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ? `${e.code} (${e.message})` : e.message));
    });
    return reach ? `cannot reach the ACME directory ${url}: ${reach}` : msg;
  }

  private async present(authz: { identifier: { value: string } }, challenge: { type: string; token: string }, keyAuth: string): Promise<void> {
    if (challenge.type === 'http-01') {
      writeAtomic(join(this.dirs.challenges, challenge.token), keyAuth);
      await this.store.putChallenge(challenge.token, keyAuth);
    } else if (challenge.type === 'tls-alpn-01') {
      const [key, cert] = await acme.crypto.createAlpnCertificate(authz as acme.Authorization, keyAuth);
      const pem = `${cert.toString()}\n${key.toString()}`;
      writeAtomic(join(this.dirs.alpn, `${authz.identifier.value}.pem`), pem);
      await this.store.putAlpn(authz.identifier.value, pem);
    } else {
      throw new Error(`challenge type ${challenge.type} is not answered by the LB`);
    }
    await new Promise((r) => setTimeout(r, SPREAD_MS));
  }

  private async cleanUp(authz: { identifier: { value: string } }, challenge: { type: string; token: string }): Promise<void> {
    if (challenge.type === 'http-01') {
      removeFile(join(this.dirs.challenges, challenge.token));
      await this.store.deleteChallenge(challenge.token).catch(() => undefined);
    } else {
      removeFile(join(this.dirs.alpn, `${authz.identifier.value}.pem`));
      await this.store.deleteAlpn(authz.identifier.value).catch(() => undefined);
    }
  }

  /** A certificate from the registry (ours or another LB's) into the files every thread serves. */
  private install(rec: CertRecord): void {
    const have = this.certs.get(rec.host);
    if (have && have.cert === rec.cert) return;
    if (have && have.notAfter > rec.notAfter) return; // never go back to an older one
    this.certs.set(rec.host, rec);
    const st = this.hosts.get(rec.host);
    if (st) st.waitingFor = '';
    // Key first: the threads reload once both are there (tls.ts waits for writes to settle).
    writeAtomic(join(this.dirs.certs, `${rec.host}.key`), rec.key);
    writeAtomic(join(this.dirs.certs, `${rec.host}.crt`), rec.cert);
    this.expiry.set({ host: rec.host }, Math.round(rec.notAfter / 1000));
    this.report();
    if (rec.node !== this.node) this.log.info({ host: rec.host, orderedBy: rec.node, notAfter: iso(rec.notAfter) }, 'ACME certificate from another LB installed');
  }

  /** status.json for `corral status` (report.ts). */
  private report(): void {
    try {
      writeAtomic(join(this.dirs.root, STATUS_FILE), JSON.stringify({ updatedAt: new Date().toISOString(), hosts: this.status() }));
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cannot write the ACME status file');
    }
  }

  status(): HostAcme[] {
    const now = Date.now();
    return [...this.wanted].sort().map((host) => {
      const rec = this.certs.get(host);
      const st = this.stateOf(host);
      const state: HostAcme['state'] = st.busy && !st.waitingFor ? (rec ? 'renewing' : 'ordering')
        : st.waitingFor ? 'waiting'
        : st.failures > 0 ? 'failed'
        : rec && now < rec.notAfter ? 'valid' : 'pending';
      return {
        host, state, notAfter: iso(rec?.notAfter ?? 0), renewAt: rec ? iso(this.renewAt(rec)) : '', orderedBy: rec?.node ?? '',
        failures: st.failures, lastError: st.lastError, nextTryAt: iso(st.nextTryAt),
      };
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    clearTimeout(this.soon);
    this.store.close();
    await this.store.registry.close();
  }
}

function oneLine(err: unknown): string {
  const e = err as { message?: string; code?: string };
  return String(e?.message ?? err).replace(/\s+/g, ' ').slice(0, 300);
}
