// One thread's serving stack: route table, balancers, passive health, upstream pools, proxy and
// (with --tls-cert-dir) the HTTPS server, everything a request touches. The main thread and
// each worker thread (workers.ts) run one of their own; nothing in it is shared between threads.
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import type { Logger } from '../api/log.js';
import { parseHostPort, type LbOptions } from '../api/options.js';
import { serviceKey, type Endpoint, type WatchEvent } from '../api/types.js';
import { balancerFor } from './balancer.js';
import { bothObservers, GateFigures } from './gate.js';
import { LbMetrics } from './metrics.js';
import { EdgeRoutes } from './middleware/edges.js';
import { AcmeThread } from './acme/thread.js';
import { OUTLIER_DEFAULTS, PassiveHealth } from './outliers.js';
import { HttpProxy } from './proxy.js';
import { RouteTable } from './routes.js';
import { TcpRouter } from './tcp/router.js';
import { CertificateStore } from './tls.js';
import { UpstreamPools } from './upstreams.js';

/** Slack on top of a drained endpoint's drain time, for the LB seeing the revision a little late. */
const DRAIN_SLACK_MS = 1_000;

/** What one thread reports for the status page. */
export interface ThreadStats {
  thread: number;
  requests: number;
  connections: number;
  revision: number;
  ready: boolean;
  upstreamPools: number;
  ejected: number;
  /** TCP/TLS connections open now (lb/tcp/). */
  tcpConnections: number;
}

/** One thread's serving stack: everything a request touches lives here, one per thread. */
export class LbThread {
  readonly metrics: LbMetrics;
  /** Per-color figures for `corral upgrade`'s gate (gate.ts). */
  readonly gate = new GateFigures();
  readonly pools: UpstreamPools;
  readonly outliers: PassiveHealth;
  readonly routes: RouteTable;
  readonly proxy: HttpProxy;
  readonly certs: CertificateStore | undefined;
  /** ACME certificates and challenges (lb/acme/), with --acme-directory. */
  readonly acme: AcmeThread | undefined;
  /** TCP and TLS-by-SNI routes (lb/tcp/). */
  readonly tcp: TcpRouter;
  /** Services whose endpoints the TCP router holds (tcpEvent). */
  private readonly tcpServices = new Set<string>();

  constructor(readonly thread: number, o: LbOptions, log: Logger, processMetrics: boolean) {
    this.metrics = new LbMetrics(processMetrics);
    const pools = (this.pools = new UpstreamPools({
      connectTimeoutMs: o.connectTimeoutMs,
      headersTimeoutMs: o.headersTimeoutMs,
      // An upstream silent mid-response for the idle timeout is cut, like HAProxy's `timeout server`.
      bodyTimeoutMs: o.idleTimeoutMs,
      keepAliveTimeoutMs: o.idleTimeoutMs,
    }, log));
    const outliers = (this.outliers = new PassiveHealth(OUTLIER_DEFAULTS, this.metrics, log));
    const tcp = (this.tcp = new TcpRouter({ ...o, terminatesHttps: !!o.tlsCertDir }, balancerFor(o.balance, outliers.stateOf), outliers, this.metrics.registry, log));
    this.routes = new RouteTable(log, (origin, last) => {
      outliers.drop(origin);
      // A drained endpoint has had its drain time already; one removed at once gets it now.
      const drainMs = last.draining ? DRAIN_SLACK_MS : Math.max(last.drainMs, DRAIN_SLACK_MS);
      pools.retire(origin, drainMs);
      tcp.retire(origin, drainMs);
    }, balancerFor(o.balance, outliers.stateOf));
    this.routes.edges = new EdgeRoutes({ authDir: o.authDir, httpsPort: parseHostPort(o.httpsListen, '--https-listen').port, warnNoAcme: thread === 0 && !o.acme.directory }, log);
    this.proxy = new HttpProxy(this.routes, pools, bothObservers(this.metrics, this.gate), log, o, outliers);
    this.metrics.openConnections = () => this.proxy.connections.size;
    this.certs = o.tlsCertDir ? CertificateStore.load(o.tlsCertDir) : undefined;
    this.acme = o.acme.directory ? new AcmeThread(o.acme) : undefined;
    this.proxy.acmeChallenge = this.acme?.challenge;
  }

  /**
   * The HTTPS server, with --tls-cert-dir; the directory is watched (each thread reloads its own
   * store, the main thread logs). Without a pair yet, handshakes fail until one is written there
   * (certificates issued after the LB started, as ACME clients do).
   */
  https(log: Logger): TlsServer | undefined {
    const acme = this.acme;
    const certs = this.certs ?? acme?.certs;
    if (!certs) return undefined;
    // HTTP/2 for the clients that offer it (h2.ts), HTTP/1.1 for the rest and for WebSocket.
    // The server's own certificate is the fallback one: clients without SNI get it.
    const sni = acme ? acme.sni(this.certs) : certs.sniCallback;
    const server = this.proxy.serve(createTlsServer({ SNICallback: sni, ALPNProtocols: ['h2', 'http/1.1'], ...certs.defaultPair() }));
    // SNI routes without a port (lb/tcp/) are passed through on this port, before TLS.
    this.tcp.shareHttps(server);
    for (const store of new Set([certs, acme?.certs])) {
      store?.watch((r) => {
        if (r.ok && store === certs) server.setSecureContext(certs.defaultPair());
        if (this.thread !== 0) return;
        if (r.ok) log.info({ dir: store.dir, certificates: r.names }, 'TLS certificates reloaded');
        else log.error({ err: r.error }, 'TLS certificates not reloaded; the previous ones stay in use');
      });
    }
    server.on('secureConnection', () => this.metrics.tlsHandshake(true));
    server.on('tlsClientError', () => this.metrics.tlsHandshake(false));
    acme?.serve(server);
    return server;
  }

  apply(ev: WatchEvent): void {
    this.routes.apply(ev);
    this.tcp.apply(this.tcpEvent(ev));
    this.metrics.appliedRevision.set(ev.revision);
  }

  /**
   * The event as the TCP router needs it: the endpoints of services with a TCP or TLS route
   * (lb/tcp/ balances over all of such a service's endpoints), and none of the others, which it
   * would otherwise keep too (most services have no TCP route). An endpoint of a service without
   * one goes to it as a deletion (it may have left a service with one). Called after the route
   * table applied the event: it holds every service's endpoints.
   */
  private tcpEvent(ev: WatchEvent): WatchEvent {
    const touched = new Set<string>();
    if (ev.snapshot) {
      this.tcpServices.clear();
      for (const key of this.routes.serviceKeys()) touched.add(key);
    } else {
      for (const ep of ev.endpoints) touched.add(serviceKey(ep.namespace, ep.service));
    }
    const endpoints: Endpoint[] = [];
    const deletedEndpoints = ev.snapshot ? [] : [...ev.deletedEndpoints];
    const whole = new Set<string>();
    for (const key of touched) {
      let tcp = false;
      for (const ep of this.routes.endpointsOf(key)) if (ep.tcpPort || (ep.tlsSni?.length ?? 0) > 0) tcp = true;
      const was = this.tcpServices.has(key);
      if (tcp && !was) {
        this.tcpServices.add(key);
        whole.add(key);
        for (const ep of this.routes.endpointsOf(key)) endpoints.push(ep);
      } else if (!tcp && was) {
        this.tcpServices.delete(key);
        for (const ep of this.routes.endpointsOf(key)) deletedEndpoints.push(ep.id);
      }
    }
    if (!ev.snapshot) {
      for (const ep of ev.endpoints) {
        const key = serviceKey(ep.namespace, ep.service);
        if (!this.tcpServices.has(key)) deletedEndpoints.push(ep.id);
        else if (!whole.has(key)) endpoints.push(ep);
      }
    }
    return { ...ev, endpoints, deletedEndpoints };
  }

  stats(): ThreadStats {
    return {
      thread: this.thread,
      requests: this.metrics.answered,
      connections: this.proxy.clientConnections,
      revision: this.routes.revision,
      ready: this.routes.ready,
      upstreamPools: this.pools.size,
      ejected: this.outliers.ejectedCount,
      tcpConnections: this.tcp.connections,
    };
  }

  async close(graceMs: number): Promise<void> {
    this.outliers.close();
    this.certs?.close();
    this.acme?.close();
    await Promise.all([this.proxy.close(graceMs), this.tcp.close(graceMs)]);
  }
}
