// The console's rows follow the real catalog through registry batches: a first load lists every
// service and host, and an event names only the rows it changed (also the service of an endpoint
// that left), with shares and serving counts by the traffic rule.
import { describe, expect, it } from 'vitest';
import { endpoint, service } from '../../test/support/records.js';
import { Catalog } from '../catalog.js';
import type { KvBatch } from '../registry/registry.js';
import { ConsoleView, type ServiceRow } from './view.js';

let rev = 0;
function batch(...events: Array<[string, unknown] | [string]>): KvBatch {
  rev += 1;
  return { revision: rev, events: events.map((e) => (e.length === 1 ? { type: 'delete' as const, key: e[0] } : { type: 'put' as const, key: e[0], value: JSON.stringify(e[1]) })) };
}

const ep = (port: number, color: string, over = {}) => endpoint({ service: 'web', address: '10.42.0.5', port, color, node: 'h1', httpHosts: ['web.test'], ...over });
const key = (port: number) => `/corral/endpoints/h1/manual:default:web:10.42.0.5:${port}`;

describe('console view', () => {
  it('lists every service with its colors, shares and serving endpoints, and every host', () => {
    const c = new Catalog('10.42.0.0/16', () => {});
    const view = new ConsoleView(c);
    c.apply(batch(
      ['/corral/blocks/h1/10.42.0.0_24', { block: '10.42.0.0/24', node: 'h1', sinceMs: 1 }],
      ['/corral/hosts/h1', { name: 'h1', block: '10.42.0.0/24', underlay: '10.99.0.1', publicKey: '', nextPublicKey: '', version: '0.1.0', wgPort: 51820, mtu: 1420, overlay: 'wireguard-go' }],
      [key(1), ep(1, 'blue')], [key(2), ep(2, 'green', { healthy: false, healthReason: 'HTTP 500' })],
      ['/corral/services/default/web', service('web', { blue: 90, green: 10 })],
    ));
    const snap = JSON.parse(view.snapshotJson()) as { revision: number; hosts: Array<{ name: string; overlay: string }>; services: ServiceRow[] };
    expect(snap.revision).toBe(rev);
    expect(snap.hosts).toEqual([{ name: 'h1', block: '10.42.0.0/24', underlay: '10.99.0.1', overlay: 'wireguard-go', version: '0.1.0', mtu: 1420, rotating: false }]);
    expect(snap.services).toEqual([['default', 'web', [['blue', 90, 1, 1], ['green', 10, 1, 0]], 1, 2, ['web.test/'], {}]]);
  });

  it('names only the services an event changed, also the one an endpoint left, and nothing for allocations', () => {
    const c = new Catalog('10.42.0.0/16', () => {});
    const view = new ConsoleView(c);
    c.apply(batch([key(1), ep(1, 'blue')], ['/corral/endpoints/h1/manual:default:api:10.42.0.6:80', endpoint({ service: 'api', address: '10.42.0.6', port: 80, node: 'h1' })]));
    view.snapshotJson();
    const follow = (b: KvBatch) => {
      const ev = c.apply(b);
      const d = view.deltaJson(ev, view.note(ev));
      return d === undefined ? undefined : (JSON.parse(d) as { services: ServiceRow[]; deletedServices: string[]; endpoints: Array<{ id: string }>; deletedEndpoints: string[] });
    };
    const switched = follow(batch(['/corral/services/default/web', service('web', { blue: 100 })]));
    expect(switched!.services.map((r) => r[1])).toEqual(['web']);
    const added = follow(batch([key(2), ep(2, 'green')]));
    expect(added!.services).toEqual([['default', 'web', [['blue', 100, 1, 1], ['green', 0, 1, 1]], 1, 2, ['web.test/'], {}]]);
    expect(added!.endpoints.map((e) => e.id)).toEqual(['manual:default:web:10.42.0.5:2']);
    const left = follow(batch([key(1)], [key(2)]));
    expect(left!.deletedEndpoints).toHaveLength(2);
    // The record is still there: the row stays, with no endpoint and nothing serving.
    expect(left!.services).toEqual([['default', 'web', [['blue', 0, 0, 0]], 0, 0, [], {}]]);
    const gone = follow(batch(['/corral/services/default/web']));
    expect(gone!.deletedServices).toEqual(['default/web']);
    expect(follow(batch(['/corral/allocations/h1/10.42.0.9', { address: '10.42.0.9', namespace: 'default', containerId: 'c', ifname: 'eth0', node: 'h1', sinceMs: 1, name: '' }]))).toBeUndefined();
    expect(JSON.parse(view.snapshotJson()).services.map((r: ServiceRow) => r[1])).toEqual(['api']);
  });
});
