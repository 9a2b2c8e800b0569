// api/wire.ts against protobufjs (what @grpc/proto-loader uses): a Watch reply encoded by ours
// decodes to what protobufjs's own encoding of it decodes to, for every field kind the messages use.
import { describe, expect, it } from 'vitest';
import { agentServiceDefinition, encodeWatchEvent } from './grpc.js';
import { emptyEvent, type Allocation, type Endpoint, type Host, type Service, type WatchEvent } from './types.js';

const watch = agentServiceDefinition().Watch!;
const decode = (b: Buffer) => watch.responseDeserialize(b) as WatchEvent;
// The service's serializer hands an object (not a Buffer) to protobufjs: the reference encoding.
const reference = (ev: WatchEvent) => decode(watch.responseSerialize(ev) as Buffer);

function endpoint(i: number, o: Partial<Endpoint> = {}): Endpoint {
  return {
    id: `manual:default:svc-${i}:10.64.1.${i % 250}:8080`, service: `svc-${i}`, namespace: 'default', address: `10.64.1.${i % 250}`, port: 8080,
    portName: 'http', color: 'blue', weight: 1, healthy: i % 2 === 0, healthReason: 'GET / answered 200', origin: 'manual', node: 'host-1',
    httpHosts: [`svc-${i}.example.test`], httpPath: '/', healthCheck: null, deploy: 'manual', drainMs: 10_000, containerId: '', containerName: '',
    draining: false, lbBalance: '', tcpPort: 0, tlsSni: [], proxyProtocol: '', ...o,
  };
}

describe('api/wire.ts encodes Watch replies as protobufjs does', () => {
  it('every field kind: strings (UTF-8, long), bools, uint32, uint64, nested messages, maps, repeated, deletions', () => {
    const ev = emptyEvent(2 ** 40 + 7, false);
    ev.endpoints.push(
      endpoint(1),
      endpoint(2, {
        healthCheck: { path: '/healthz', tcp: false, intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3 },
        edge: { 'corral.http.redirect': 'https', 'corral.http.hsts': 'max-age=31536000' },
        tlsSni: ['a.example.test', 'b.example.test'], tcpPort: 8443, proxyProtocol: 'v2', draining: true, weight: 1000,
        healthReason: 'é ü 漢字 🙂'.repeat(200), // a 3-byte length prefix
      }),
    );
    const svc: Service = { namespace: 'default', name: 'svc-1', active: { blue: 90, green: 10 }, previous: { blue: 100 } };
    const host: Host = { name: 'host-1', block: '10.64.1.0/24', underlay: '198.18.0.1', publicKey: 'k'.repeat(44), nextPublicKey: '', version: '1.2.3', wgPort: 51820, mtu: 1420, overlay: 'wireguard-go' };
    const alloc: Allocation = { address: '10.64.1.9', namespace: 'default', containerId: 'c'.repeat(64), ifname: 'eth0', node: 'host-1', sinceMs: 1_796_322_266_340, name: 'web-1' };
    ev.services.push(svc, { namespace: 'default', name: 'empty', active: {}, previous: {} });
    ev.hosts.push(host);
    ev.allocations.push(alloc);
    ev.deletedEndpoints.push('gone-1', '');
    ev.deletedServices.push('default/old');
    ev.deletedHosts.push('host-9');
    ev.deletedAllocations.push('10.64.1.10');
    const ours = decode(encodeWatchEvent(ev));
    expect(ours).toEqual(reference(ev));
    expect(ours.endpoints[1]!.edge).toEqual(ev.endpoints[1]!.edge);
    expect(ours.allocations[0]!.sinceMs).toBe(alloc.sinceMs);
    expect(ours.revision).toBe(2 ** 40 + 7);
  });

  it('a snapshot of 3,000 endpoints (the buffer grows) and an empty delta', () => {
    const snap = emptyEvent(99, true);
    for (let i = 0; i < 3_000; i++) snap.endpoints.push(endpoint(i));
    expect(decode(encodeWatchEvent(snap))).toEqual(reference(snap));
    const empty = emptyEvent(100, false);
    expect(decode(encodeWatchEvent(empty))).toEqual(reference(empty));
  });

  it('encodes one event object once: streams share the bytes', () => {
    const ev = emptyEvent(5, false);
    ev.endpoints.push(endpoint(5));
    expect(encodeWatchEvent(ev)).toBe(encodeWatchEvent(ev));
  });
});
