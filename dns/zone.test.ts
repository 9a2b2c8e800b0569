// Endpoint names and PTRs are not stored names: the zone works them out from the name asked
// against its address index. These check that index through the cases that move it: two
// endpoints of a service on one address (two ports), one address in two services, IPv6 written
// two ways, updates that move an endpoint, and the change notices the answer cache relies on.
import { describe, expect, it } from 'vitest';
import { delta, endpoint, snapshot } from '../test/support/records.js';
import { Zone } from './zone.js';
import { TYPE } from './wire.js';

const ptrOf = (z: Zone, name: string) => (z.answer(name, TYPE.PTR)?.answer ?? []).map((r) => (r.data as { target: string }).target).sort();
const aOf = (z: Zone, name: string, type: number = TYPE.A) => (z.answer(name, type)?.answer ?? []).map((r) => (r.data as { address: string }).address);
const rcode = (z: Zone, name: string) => (z.answer(name, TYPE.A)!.flags & 0xf);

describe('zone: endpoint names and PTRs', () => {
  it('keeps a name while any endpoint of the service has the address, and shares a PTR between services', () => {
    const z = new Zone();
    const changes: Array<string[] | null> = [];
    z.onChange((c) => changes.push(c.names));
    const web1 = endpoint({ service: 'web', address: '10.42.0.5', port: 80 });
    const web2 = endpoint({ service: 'web', address: '10.42.0.5', port: 81 });
    const api = endpoint({ service: 'api', address: '10.42.0.5', port: 90 });
    z.apply(snapshot(1, [web1, web2, api]));
    expect(aOf(z, '10-42-0-5.web.default.corral.internal')).toEqual(['10.42.0.5']);
    expect(ptrOf(z, '5.0.42.10.in-addr.arpa')).toEqual(['10-42-0-5.api.default.corral.internal', '10-42-0-5.web.default.corral.internal']);
    expect(z.stats().names).toBeGreaterThanOrEqual(4);

    // One of web's two endpoints goes: the name stays, nothing about it changed.
    z.apply(delta(2, { deletedEndpoints: [web1.id] }));
    expect(aOf(z, '10-42-0-5.web.default.corral.internal')).toEqual(['10.42.0.5']);
    expect(changes.at(-1) ?? []).not.toContain('10-42-0-5.web.default.corral.internal');
    // The other goes: web's name is gone (NXDOMAIN), the PTR names api only, both were reported changed.
    z.apply(delta(3, { deletedEndpoints: [web2.id] }));
    expect(rcode(z, '10-42-0-5.web.default.corral.internal')).toBe(3);
    expect(ptrOf(z, '5.0.42.10.in-addr.arpa')).toEqual(['10-42-0-5.api.default.corral.internal']);
    expect(changes.at(-1)).toEqual(expect.arrayContaining(['10-42-0-5.web.default.corral.internal', '5.0.42.10.in-addr.arpa']));

    // An endpoint moves to another address: the old name and PTR go, the new ones appear.
    z.apply(delta(4, { endpoints: [{ ...api, address: '10.42.0.6' }] }));
    expect(rcode(z, '10-42-0-5.api.default.corral.internal')).toBe(3);
    expect(z.answer('5.0.42.10.in-addr.arpa', TYPE.PTR)).toBeNull(); // not ours any more: forwarded
    expect(aOf(z, '10-42-0-6.api.default.corral.internal')).toEqual(['10.42.0.6']);
    expect(ptrOf(z, '6.0.42.10.in-addr.arpa')).toEqual(['10-42-0-6.api.default.corral.internal']);
  });

  it('names an IPv6 endpoint one way however its address is written, and rejects names no endpoint has', () => {
    const z = new Zone();
    z.apply(snapshot(1, [endpoint({ service: 'v6', address: 'fd00:42::5', port: 1 }), endpoint({ service: 'v6', address: 'fd00:42:0:0:0:0:0:5', port: 2 })]));
    const name = 'fd00-42-0-0-0-0-0-5.v6.default.corral.internal';
    expect(aOf(z, name, TYPE.AAAA)).toEqual(['fd00:42::5']);
    const nibbles = '5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.4.0.0.0.0.d.f.ip6.arpa';
    expect(ptrOf(z, nibbles)).toEqual([name]);
    for (const bad of ['fd00-42-0-0-0-0-0-6.v6.default.corral.internal', 'fd00-042-0-0-0-0-0-5.v6.default.corral.internal', '10-42-0-5.v6.default.corral.internal', 'x.v6.default.corral.internal']) {
      expect(rcode(z, bad)).toBe(3);
    }
    // The SRV targets are those names, with their addresses in additional.
    const srv = z.answer('_http._tcp.v6.default.corral.internal', TYPE.SRV)!;
    expect(srv.answer.map((r) => (r.data as { target: string }).target)).toEqual([name, name]);
    expect(srv.additional.map((r) => r.name)).toEqual([name]);
  });
});
