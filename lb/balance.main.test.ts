// Per-service balancing through the real executables: a `corral agent`, one `corral lb` with the
// default --lb-balance (round-robin), services registered by `corral register` with and without
// `--lb-balance least-request`, real Node HTTP backends on 127.0.0.1, one of them slow.
import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { agentClient, grpc, unary } from '../api/grpc.js';
import type { Endpoint, EndpointReply, RegisterRequest } from '../api/types.js';
import { startDaemon, type Daemon } from '../test/support/corral.js';
import { Backend, cliOk, startBackends } from '../test/support/lb.js';
import { untilOk } from '../test/support/until.js';

let agent: Daemon;
let lb: Daemon;
const client = new Agent({ keepAliveTimeout: 1_000, connections: 64 });
let backends: Backend[] = [];

beforeAll(async () => {
  agent = await startDaemon('agent');
  lb = await startDaemon('lb', { args: ['--agent-socket', agent.socket] });
});

afterAll(async () => {
  await lb?.stop();
  await agent?.stop();
  await client.close();
});

afterEach(async () => {
  await Promise.all(backends.map((b) => b.stop()));
  backends = [];
});

const cli = (args: string[]): Promise<string> => cliOk(agent, args);

async function register(svc: string, b: Backend, extra: string[] = []): Promise<number> {
  return (JSON.parse(await cli(['register', svc, `127.0.0.1:${b.port}`, '--http-host', `${svc}.test`, '--json', ...extra])) as { revision: number }).revision;
}

async function lbStatus(): Promise<{ revision: number; balance: string; balancers: Record<string, number>; threads: number }> {
  const res = await request(`http://127.0.0.1:${lb.adminPort}/`, { dispatcher: client });
  return JSON.parse(await res.body.text()) as { revision: number; balance: string; balancers: Record<string, number>; threads: number };
}

function untilApplied(revision: number): Promise<unknown> {
  return untilOk(`lb applied revision ${revision}`, lbStatus, (st) => st.revision >= revision, { ms: 10_000, everyMs: 20, detail: () => `--- lb ---\n${lb.logs().slice(-2000)}` });
}

/**
 * `n` requests to a service, a new one every `gapMs` without waiting for earlier ones (so the
 * slow backend's requests pile up while the fast one's finish). All must answer 200.
 */
async function burst(svc: string, n: number, gapMs: number): Promise<void> {
  const pending: Array<Promise<number>> = [];
  for (let i = 0; i < n; i++) {
    pending.push(request(`http://127.0.0.1:${lb.httpPort}/`, { headers: { host: `${svc}.test` }, dispatcher: client }).then(async (r) => {
      await r.body.text();
      return r.statusCode;
    }));
    await new Promise((r) => setTimeout(r, gapMs));
  }
  expect(await Promise.all(pending)).toEqual(Array(n).fill(200));
}

describe('balancing policy per service (corral register --lb-balance)', () => {
  it('least-request for the service that asks, round robin for the one that does not, on one LB; a re-registration switches it live', async () => {
    backends = await startBackends(['lr-slow'], ['lr-fast'], ['rr-slow'], ['rr-fast']);
    const [lrSlow, lrFast, rrSlow, rrFast] = backends as [Backend, Backend, Backend, Backend];
    lrSlow.delayMs = 2_000;
    rrSlow.delayMs = 2_000;
    await register('lr', lrSlow, ['--lb-balance', 'least-request']);
    await register('lr', lrFast, ['--lb-balance', 'Least-Request']); // case is ignored
    await register('rr', rrSlow);
    const rev = await register('rr', rrFast);
    await untilApplied(rev);

    // The record carries the field; the LB runs with its default and counts one service per policy.
    const eps = JSON.parse(await cli(['endpoints', 'lr', '--json'])) as { endpoints: Endpoint[] };
    expect(eps.endpoints.map((e) => e.lbBalance)).toEqual(['least-request', 'least-request']);
    const rrEps = JSON.parse(await cli(['endpoints', 'rr', '--json'])) as { endpoints: Endpoint[] };
    expect(rrEps.endpoints.map((e) => e.lbBalance)).toEqual(['', '']);
    expect(await lbStatus()).toMatchObject({ balance: 'round-robin', balancers: { 'round-robin': 1, 'least-request': 1 } });

    // 30 requests each, one every 15 ms; the slow backends hold theirs for 2 s.
    await Promise.all([burst('lr', 30, 15), burst('rr', 30, 15)]);
    // Least request: the slow backend gets about one request (while both are idle, and a few more
    // if the fast one is still answering when a request arrives on a loaded machine), then the
    // fast one wins every comparison while the slow one has requests in flight.
    expect(lrSlow.requests).toBeLessThanOrEqual(5);
    expect(lrFast.requests).toBeGreaterThanOrEqual(25);
    // Round robin: an even split, whatever the load, in each thread of the LB (each has its own
    // balancer state, and the connections spread over them): off by at most one per thread.
    const { threads } = await lbStatus();
    expect(rrSlow.requests + rrFast.requests).toBe(30);
    expect(Math.abs(rrSlow.requests - rrFast.requests)).toBeLessThanOrEqual(threads === 1 ? 0 : threads);

    // Re-registering rr's endpoints with --lb-balance least-request switches that service live.
    await register('rr', rrSlow, ['--lb-balance', 'least-request']);
    const sw = await register('rr', rrFast, ['--lb-balance', 'least-request']);
    await untilApplied(sw);
    expect((await lbStatus()).balancers).toEqual({ 'round-robin': 0, 'least-request': 2 });
    expect(lb.logs()).toMatch(/"service":"default\/rr","policy":"least-request","was":"round-robin".*balancing policy of the service changed/);
    const before = rrSlow.requests;
    await burst('rr', 30, 15);
    expect(rrSlow.requests - before).toBeLessThanOrEqual(5);
  });

  it('refuses a bad --lb-balance with one line and exit code 2, before asking the agent', async () => {
    const r = await agent.cli(['register', 'web', '127.0.0.1:8080', '--lb-balance', 'least-connections']);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe('corral: --lb-balance "least-connections" is not round-robin or least-request');
    // The agent checks the gRPC request too (clients other than the CLI): INVALID_ARGUMENT.
    const c = agentClient(agent.socket);
    try {
      const req: RegisterRequest = {
        service: 'web', namespace: 'default', address: '127.0.0.1', port: 8080, color: '', httpHosts: [], httpPath: '',
        weight: 0, healthCheck: null, portName: '', lbBalance: 'fastest',
      };
      const err = await unary<RegisterRequest, EndpointReply>(c, 'Register', req).then(() => undefined, (e: grpc.ServiceError) => e);
      expect(err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err?.details).toBe('lb balance="fastest" is not valid: round-robin or least-request');
    } finally {
      c.close();
    }
    const help = await agent.cli(['register', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--lb-balance round-robin\|least-request/);
    expect(help.stdout).toMatch(/--lb-balance +how the LB balances this service: round-robin or least-request \(default: the LB's --lb-balance\)/);
  });
});
