// `corral lb`: watches the agent, keeps the route table and balancers at the registry's revision,
// serves HTTP on --http-listen and the admin endpoint on --admin-listen.
import type { Server } from 'node:http';
import { startAdmin } from '../api/admin.js';
import type { Logger } from '../api/log.js';
import { ADMIN_DEFAULTS, type DaemonOptions } from '../api/options.js';
import { AgentWatch } from '../api/watch.js';
import { LbMetrics } from './metrics.js';
import { Proxy } from './proxy.js';
import { RouteTable } from './routes.js';
import { UPSTREAM_DEFAULTS, UpstreamPools } from './upstreams.js';

/** How long shutdown waits for in-flight requests before cutting them. */
const SHUTDOWN_GRACE_MS = 10_000;

export async function runLb(opts: DaemonOptions, log: Logger): Promise<{ close(): Promise<void>; port: number }> {
  const metrics = new LbMetrics();
  const pools = new UpstreamPools(UPSTREAM_DEFAULTS, log);
  const routes = new RouteTable(log, (origin) => pools.retire(origin));
  const proxy = new Proxy(routes, pools, metrics, log);

  const watch = new AgentWatch(opts.agentSocket, 'lb', {
    onEvent(ev) {
      routes.apply(ev);
      metrics.appliedRevision.set(ev.revision);
      if (ev.snapshot) log.info({ revision: ev.revision, ...routes.stats }, 'routes loaded from the agent');
      else log.debug({ revision: ev.revision }, 'routes updated');
    },
  }, log);

  const port = await proxy.listen(opts.httpListen);
  let admin: Server;
  try {
    admin = await startAdmin(opts.adminListen || ADMIN_DEFAULTS.lb, {
      metrics: metrics.registry,
      ready: () => routes.ready,
      status: () => ({
        component: 'lb',
        httpListen: opts.httpListen,
        port,
        agentSocket: opts.agentSocket,
        connected: watch.connected,
        revision: routes.revision,
        ready: routes.ready,
        ...routes.stats,
        upstreamPools: pools.size,
      }),
    });
  } catch (err) {
    await proxy.close(0);
    throw err;
  }
  watch.start();
  log.info({ http: opts.httpListen, port, admin: opts.adminListen || ADMIN_DEFAULTS.lb, agent: opts.agentSocket }, 'load balancer listening');

  let closing: Promise<void> | undefined;
  return {
    port,
    close() {
      closing ??= (async () => {
        watch.close();
        await new Promise<void>((resolve) => admin.close(() => resolve()));
        admin.closeAllConnections();
        await proxy.close(SHUTDOWN_GRACE_MS);
      })();
      return closing;
    },
  };
}
