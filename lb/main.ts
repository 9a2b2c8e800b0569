// `corral lb`: watches the agent, keeps the route table and balancers at the registry's revision,
// serves HTTP on --http-listen (and HTTPS on --https-listen when --tls-cert-dir has certificates)
// and the admin endpoint on --admin-listen.
import type { Server } from 'node:http';
import { createServer as createTlsServer } from 'node:tls';
import { startAdmin } from '../api/admin.js';
import type { Logger } from '../api/log.js';
import { ADMIN_DEFAULTS, LB_DEFAULTS, type DaemonOptions } from '../api/options.js';
import { AgentWatch } from '../api/watch.js';
import { balancerFor } from './balancer.js';
import { LbMetrics } from './metrics.js';
import { OUTLIER_DEFAULTS, PassiveHealth } from './outliers.js';
import { Proxy } from './proxy.js';
import { RouteTable } from './routes.js';
import { CertificateStore } from './tls.js';
import { UpstreamPools } from './upstreams.js';

/** How long shutdown waits for in-flight requests before cutting them. */
const SHUTDOWN_GRACE_MS = 10_000;
/** Slack on top of a drained endpoint's drain time, for the LB seeing the revision a little late. */
const DRAIN_SLACK_MS = 1_000;

export interface RunningLb {
  close(): Promise<void>;
  port: number;
  /** The HTTPS port, 0 without certificates. */
  httpsPort: number;
}

export async function runLb(opts: DaemonOptions, log: Logger): Promise<RunningLb> {
  const o = { ...LB_DEFAULTS, ...opts.lb };
  const metrics = new LbMetrics();
  const pools = new UpstreamPools({
    connectTimeoutMs: o.connectTimeoutMs,
    headersTimeoutMs: o.headersTimeoutMs,
    bodyTimeoutMs: 0,
    keepAliveTimeoutMs: o.idleTimeoutMs,
  }, log);
  const outliers = new PassiveHealth(OUTLIER_DEFAULTS, metrics, log);
  const routes = new RouteTable(log, (origin, last) => {
    outliers.drop(origin);
    // A drained endpoint has had its drain time already; one removed at once gets it now.
    pools.retire(origin, last.draining ? DRAIN_SLACK_MS : Math.max(last.drainMs, DRAIN_SLACK_MS));
  }, balancerFor(o.balance, outliers.stateOf));
  const proxy = new Proxy(routes, pools, metrics, log, o, outliers);
  const certs = o.tlsCertDir ? CertificateStore.load(o.tlsCertDir) : undefined;
  if (certs && certs.size === 0) log.warn({ dir: o.tlsCertDir }, 'no <host>.crt + <host>.key pairs in --tls-cert-dir; HTTPS stays off');

  const watch = new AgentWatch(opts.agentSocket, 'lb', {
    onEvent(ev) {
      routes.apply(ev);
      metrics.appliedRevision.set(ev.revision);
      if (ev.snapshot) log.info({ revision: ev.revision, ...routes.stats }, 'routes loaded from the agent');
      else log.debug({ revision: ev.revision }, 'routes updated');
    },
  }, log);

  let admin: Server | undefined;
  let port = 0;
  let httpsPort = 0;
  try {
    port = await proxy.listen(opts.httpListen);
    if (certs && certs.size > 0) {
      const https = proxy.serve(createTlsServer({ SNICallback: certs.sniCallback }));
      httpsPort = await proxy.listen(o.httpsListen, https, '--https-listen');
    }
    admin = await startAdmin(opts.adminListen || ADMIN_DEFAULTS.lb, {
      metrics: metrics.registry,
      ready: () => routes.ready,
      status: () => ({
        component: 'lb',
        httpListen: opts.httpListen,
        port,
        httpsPort,
        certificates: certs?.names ?? [],
        balance: o.balance,
        agentSocket: opts.agentSocket,
        connected: watch.connected,
        revision: routes.revision,
        ready: routes.ready,
        ...routes.stats,
        upstreamPools: pools.size,
        ejected: outliers.ejectedCount,
      }),
    });
  } catch (err) {
    outliers.close();
    await proxy.close(0);
    throw err;
  }
  watch.start();
  log.info({ http: opts.httpListen, port, https: httpsPort ? o.httpsListen : '', admin: opts.adminListen || ADMIN_DEFAULTS.lb, agent: opts.agentSocket, balance: o.balance }, 'load balancer listening');

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
        outliers.close();
        await proxy.close(SHUTDOWN_GRACE_MS);
      })();
      return closing;
    },
  };
}
