// Docker's defaults merged into daemon.json: the user's keys kept, a file that does not parse
// never written, the agent's own keys updated when the block or MTU changes.
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Ipam, IpamExhausted } from '../ipam.js';
import { applyDockerDefaults, DaemonJsonError, dockerDefaults, dockerRange, inDockerHalf, mergeDaemonJson } from './defaults.js';

let dir: string;
let file: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'corral-daemonjson-'));
  file = join(dir, 'daemon.json');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const defs = (block = '10.42.3.0/24', mtu = 1440) => dockerDefaults({ block, mtu, dnsDomain: 'corral.internal' });

describe('Docker defaults', () => {
  it('puts docker0 on the upper half of the block and Corral DNS on the block gateway', () => {
    expect(defs()).toEqual({ bip: '10.42.3.129/25', mtu: 1440, dns: ['10.42.3.1'], 'dns-search': ['default.corral.internal', 'corral.internal'], 'dns-opts': ['ndots:2'], 'ip-masq': false });
    expect(dockerRange('10.42.3.0/24')).toBe('10.42.3.128/25');
    expect(dockerRange('10.42.8.0/22')).toBe('10.42.10.0/23');
    expect(inDockerHalf('10.42.3.0/24', '10.42.3.127')).toBe(false);
    expect(inDockerHalf('10.42.3.0/24', '10.42.3.128')).toBe(true);
    expect(() => defs('10.42.3.0/29')).toThrow(/too small/);
  });

  it('creates daemon.json when absent, and keeps every key the user set', () => {
    expect(mergeDaemonJson(file, defs()).changed).toHaveLength(6);
    writeFileSync(file, JSON.stringify({ 'log-level': 'warn', dns: ['1.1.1.1'] }));
    rmSync(`${file}.corral`);
    const r = mergeDaemonJson(file, defs());
    expect(r.kept).toEqual([{ key: 'dns', theirs: ['1.1.1.1'], ours: ['10.42.3.1'] }]);
    const j = JSON.parse(readFileSync(file, 'utf8'));
    expect(j['log-level']).toBe('warn');
    expect(j.dns).toEqual(['1.1.1.1']);
    expect(j.bip).toBe('10.42.3.129/25');
  });

  it('changes nothing when run again, and updates its own keys for a new block or MTU', () => {
    writeFileSync(file, JSON.stringify({ 'log-level': 'warn' }));
    mergeDaemonJson(file, defs());
    const before = readFileSync(file, 'utf8');
    expect(mergeDaemonJson(file, defs())).toEqual({ changed: [], kept: [] });
    expect(readFileSync(file, 'utf8')).toBe(before);
    const r = mergeDaemonJson(file, defs('10.42.7.0/24', 1420));
    expect(r.changed.sort()).toEqual(['bip', 'dns', 'mtu']);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toMatchObject({ 'log-level': 'warn', bip: '10.42.7.129/25', mtu: 1420 });
  });

  it('never writes a daemon.json that does not parse, and says so in one error the agent logs', () => {
    for (const bad of ['{"log-level": "warn",', '[1, 2]']) {
      writeFileSync(file, bad);
      expect(() => mergeDaemonJson(file, defs())).toThrow(DaemonJsonError);
      expect(readFileSync(file, 'utf8')).toBe(bad);
      expect(existsSync(`${file}.corral`)).toBe(false);
    }
    const logged: Array<[string, unknown, string]> = [];
    const log = { error: (o: unknown, m: string) => logged.push(['error', o, m]), warn: (o: unknown, m: string) => logged.push(['warn', o, m]), info: (o: unknown, m: string) => logged.push(['info', o, m]) };
    expect(applyDockerDefaults(file, { block: '10.42.3.0/24', mtu: 1440, dnsDomain: 'corral.internal' }, log as never)).toBeUndefined();
    expect(logged).toHaveLength(1);
    expect(logged[0]![0]).toBe('error');
    expect(String((logged[0]![1] as { err: string }).err)).toMatch(/daemon\.json is not a JSON object: fix it by hand; Corral left it as it is/);
  });

  it('leaves Docker\'s half of the block out of the IPAM', () => {
    const ipam = new Ipam(dir, '10.42.3.0/24', { dockerHalf: true });
    ipam.open();
    const got: string[] = [];
    try {
      for (let i = 0; ; i++) got.push(ipam.allocate({ containerId: `c${i}`, ifname: 'eth0', namespace: 'default', network: 't', netns: '', name: '', hostIfname: '', masq: true }).address);
    } catch (err) {
      expect(err).toBeInstanceOf(IpamExhausted);
    }
    ipam.close();
    expect(got.length).toBe(126); // .2 to .127: the gateway is .1, Docker has .128/25
    expect(got.some((a) => inDockerHalf('10.42.3.0/24', a))).toBe(false);
  });
});
