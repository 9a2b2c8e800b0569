// One thread's stack hands the TCP router only the services that have a TCP or TLS route (the
// router would keep every endpoint otherwise): the routes it builds must be the same as if it had
// been given everything, as endpoints gain and lose TCP ports, move between services and go.
import { afterEach, describe, expect, it } from 'vitest';
import { makeLogger } from '../api/log.js';
import { LB_DEFAULTS } from '../api/options.js';
import { freePort } from '../test/support/corral.js';
import { delta, endpoint, snapshot } from '../test/support/records.js';
import { LbThread } from './stack.js';

const log = makeLogger('lb', 'silent');
let thread: LbThread | undefined;

afterEach(async () => {
  await thread?.close(0);
  thread = undefined;
});

/** The addresses the TCP route on `port` balances over (sorted), or null when the port has none. */
function tcpPeers(t: LbThread, port: number): string[] | null {
  const svc = t.tcp.table.port(port)?.fallback;
  return svc ? svc.balancer.peers.map((p) => p.endpoint.address).sort() : null;
}

describe('the TCP router fed by the stack', () => {
  it('routes the services with a TCP port over all their endpoints, through changes, moves and deletions', async () => {
    const [p1, p2] = [await freePort(), await freePort()];
    thread = new LbThread(1, { ...LB_DEFAULTS, threads: 1, httpListen: '127.0.0.1:0', httpsListen: '127.0.0.1:0' }, log, false);
    const t = thread;
    const dbA = endpoint({ service: 'db', address: '127.0.0.11', tcpPort: p1 });
    const dbB = endpoint({ service: 'db', address: '127.0.0.12' });
    const webA = endpoint({ service: 'web', address: '127.0.0.21' });
    const webB = endpoint({ service: 'web', address: '127.0.0.22' });
    t.apply(snapshot(1, [dbA, dbB, webA, webB]));
    // db has a TCP port on one endpoint: its route balances over both; web has none.
    expect(tcpPeers(t, p1)).toEqual(['127.0.0.11', '127.0.0.12']);
    expect(tcpPeers(t, p2)).toBeNull();

    // web gains a TCP port on one endpoint: the route has every web endpoint, the earlier one included.
    t.apply(delta(2, { endpoints: [{ ...webB, tcpPort: p2 }] }));
    expect(tcpPeers(t, p2)).toEqual(['127.0.0.21', '127.0.0.22']);

    // An endpoint of web moves to a service without a TCP route (same id): web's route loses it.
    t.apply(delta(3, { endpoints: [{ ...webA, service: 'other' }] }));
    expect(tcpPeers(t, p2)).toEqual(['127.0.0.22']);
    // A new endpoint of db without a port joins db's route.
    const dbC = endpoint({ service: 'db', address: '127.0.0.13' });
    t.apply(delta(4, { endpoints: [dbC] }));
    expect(tcpPeers(t, p1)).toEqual(['127.0.0.11', '127.0.0.12', '127.0.0.13']);
    // db's only TCP endpoint drops its port: db has no route any more.
    t.apply(delta(5, { endpoints: [{ ...dbA, tcpPort: 0 }] }));
    expect(tcpPeers(t, p1)).toBeNull();
    // ...and gets it back: every db endpoint is in the route again.
    t.apply(delta(6, { endpoints: [dbA] }));
    expect(tcpPeers(t, p1)).toEqual(['127.0.0.11', '127.0.0.12', '127.0.0.13']);
    // Deletions reach it.
    t.apply(delta(7, { deletedEndpoints: [dbB.id] }));
    expect(tcpPeers(t, p1)).toEqual(['127.0.0.11', '127.0.0.13']);
    // A snapshot replaces everything: web's TCP endpoint is gone, db's is all there is.
    t.apply(snapshot(8, [dbA, webA]));
    expect(tcpPeers(t, p1)).toEqual(['127.0.0.11']);
    expect(tcpPeers(t, p2)).toBeNull();
  });
});
