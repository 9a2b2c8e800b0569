// `corral lb`: watches the agent, keeps the route table and balancers at the registry's revision,
// serves HTTP on --http-listen (and HTTPS on --https-listen when --tls-cert-dir has certificates)
// and the admin endpoint on --admin-listen. With --lb-threads above 1, worker threads serve the
// same ports with stacks of their own (workers.ts); this thread keeps the watch and the admin.
import type { Server } from 'node:http';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { startAdmin } from '../api/admin.js';
import type { Logger } from '../api/log.js';
import { ADMIN_DEFAULTS, LB_DEFAULTS, type DaemonOptions } from '../api/options.js';
import { socketWatch, type WatchSource } from '../api/watch.js';
import type { Registry } from '../agent/registry/registry.js';
import { mergedMetrics, type SpawnWorker } from '../api/workers.js';
import { addFigures } from './gate.js';
import { closeFds, listenFd, reusePortListeners, type SharedListeners } from './listeners.js';
import { LbThread, type ThreadStats } from './stack.js';
import { startAcme, type AcmeManager } from './acme/index.js';
import { startLbWorkers, type LbWorkers } from './workers.js';

/** How long shutdown waits for in-flight requests before cutting them. */
const SHUTDOWN_GRACE_MS = 10_000;

export interface RunningLb {
  close(): Promise<void>;
  port: number;
  /** The HTTPS port, 0 without certificates. */
  httpsPort: number;
}

export interface LbTuning {
  /** How worker threads are started (tests run them from the TypeScript source). */
  spawnWorker?: SpawnWorker;
  /** Where records come from (default: the agent's socket, --agent-socket). */
  watch?: WatchSource;
  /** Where LBs share ACME certificates and locks (default: etcd with --registry etcd://, else a store in <state dir>/acme). */
  acmeRegistry?: Registry;
}

export async function runLb(opts: DaemonOptions, log: Logger, tuning: LbTuning = {}): Promise<RunningLb> {
  const o = { ...LB_DEFAULTS, ...opts.lb, httpListen: opts.httpListen };
  o.authDir ||= join(opts.stateDir, 'lb-auth');
  o.acme = { ...o.acme, dir: o.acme.dir || join(opts.stateDir, 'acme') };
  const main = new LbThread(0, o, log, true);
  const { routes, proxy, certs } = main;
  if (certs && certs.size === 0) log.warn({ dir: o.tlsCertDir }, 'no <host>.crt + <host>.key pair in --tls-cert-dir yet; HTTPS answers once one is there');
  const https = main.https(log);

  let threads = o.threads > 0 ? o.threads : availableParallelism();
  let workers: LbWorkers | undefined;
  let admin: Server | undefined;
  let port = 0;
  let httpsPort = 0;
  let shared: { http: SharedListeners; https: SharedListeners | undefined } | undefined;
  try {
    if (threads > 1) {
      try {
        const http = await reusePortListeners(opts.httpListen, threads, '--http-listen');
        try {
          shared = { http, https: https ? await reusePortListeners(o.httpsListen, threads, '--https-listen') : undefined };
        } catch (err) {
          closeFds(http.fds);
          throw err;
        }
      } catch (err) {
        if (!(err as { unsupported?: boolean }).unsupported) throw err;
        log.warn({ err: (err as Error).message, threads }, 'cannot share the HTTP port between threads (koffi or SO_REUSEPORT unavailable); serving on one thread');
        threads = 1;
      }
    }
    if (shared) {
      const { http, https: tls } = shared;
      try {
        workers = await startLbWorkers(o, opts.logLevel, http.fds.slice(1), tls?.fds.slice(1) ?? [], log, tuning.spawnWorker);
      } catch (err) {
        closeFds([http.fds[0]!, ...(tls ? [tls.fds[0]!] : [])]);
        throw err;
      }
      await listenFd(proxy.server, http.fds[0]!);
      port = http.port;
      if (https && tls) {
        await listenFd(https, tls.fds[0]!);
        httpsPort = tls.port;
      }
    } else {
      port = await proxy.listen(opts.httpListen);
      if (https) httpsPort = await proxy.listen(o.httpsListen, https, '--https-listen');
    }
  } catch (err) {
    await Promise.all([main.close(0), workers?.close(0)]);
    throw err;
  }

  let acme: AcmeManager | undefined;
  if (o.acme.directory) {
    try {
      acme = await startAcme(opts, o.acme, main.metrics.registry, log.child({ part: 'acme' }), tuning.acmeRegistry);
    } catch (err) {
      await Promise.all([main.close(0), workers?.close(0)]);
      throw err;
    }
  }
  const watch = (tuning.watch ?? socketWatch(opts.agentSocket))('lb', {
    kinds: ['endpoints', 'services'],
    onEvent(ev) {
      main.apply(ev);
      acme?.wantFrom(routes);
      if (ev.snapshot) log.info({ revision: ev.revision, ...routes.stats }, 'routes loaded from the agent');
      else log.debug({ revision: ev.revision }, 'routes updated');
      // Acked to the agent only once every thread serves it: `corral status` must not claim a
      // switch is applied while one thread still sends requests to the old color.
      return workers?.apply(ev);
    },
  }, log);

  const ready = () => routes.ready && (workers?.ready ?? true);
  const threadsMetrics = workers;
  const metrics = threadsMetrics === undefined ? main.metrics.registry : mergedMetrics(main.metrics.registry, () => threadsMetrics.ask('metrics'));
  const status = async () => {
    const all: ThreadStats[] = [main.stats(), ...((await workers?.ask('stats')) ?? [])];
    return {
      component: 'lb',
      httpListen: opts.httpListen,
      port,
      httpsPort,
      certificates: certs?.names ?? [],
      ...(acme ? { acme: acme.status() } : {}),
      balance: o.balance,
      agentSocket: opts.agentSocket,
      connected: watch.connected,
      // What every thread has applied.
      revision: Math.min(...all.map((t) => t.revision)),
      ready: ready(),
      ...routes.stats,
      ...main.tcp.table.stats,
      tcpConnections: all.reduce((n, t) => n + t.tcpConnections, 0),
      upstreamPools: all.reduce((n, t) => n + t.upstreamPools, 0),
      ejected: Math.max(...all.map((t) => t.ejected)),
      threads: all.length,
      requests: all.reduce((n, t) => n + t.requests, 0),
      perThread: all,
      workerHeaps: (await workers?.heaps()) ?? [],
    };
  };
  try {
    // /gate?service=<ns>/<name>: `corral upgrade`'s per-color figures, every thread's added up.
    const gate = async (q: URLSearchParams) => addFigures([main.gate.figures(q.get('service') ?? ''), ...((await workers?.ask('gate', q.get('service') ?? '')) ?? [])]);
    admin = await startAdmin(opts.adminListen || ADMIN_DEFAULTS.lb, { metrics, ready, status, pages: { '/gate': gate } });
  } catch (err) {
    await Promise.all([main.close(0), workers?.close(0), acme?.close()]);
    throw err;
  }
  watch.start();
  log.info({ http: opts.httpListen, port, https: httpsPort ? o.httpsListen : '', admin: opts.adminListen || ADMIN_DEFAULTS.lb, agent: opts.agentSocket, balance: o.balance, threads }, 'load balancer listening');

  let closing: Promise<void> | undefined;
  const adminServer = admin;
  return {
    port,
    httpsPort,
    close() {
      closing ??= (async () => {
        watch.close();
        await new Promise<void>((resolve) => adminServer.close(() => resolve()));
        adminServer.closeAllConnections();
        await Promise.all([main.close(SHUTDOWN_GRACE_MS), workers?.close(SHUTDOWN_GRACE_MS), acme?.close()]);
      })();
      return closing;
    },
  };
}
