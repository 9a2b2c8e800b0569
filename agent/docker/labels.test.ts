import { describe, expect, it } from 'vitest';
import { endpointFromContainer, endpointSpecFromContainer, LabelError, type InspectedContainer } from './labels.js';

const ID = 'abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789';

function container(labels: Record<string, string> | null, more: Partial<InspectedContainer> = {}): InspectedContainer {
  return {
    Id: ID,
    Name: '/web-1',
    Config: { Labels: labels, ExposedPorts: null },
    State: { Health: null },
    NetworkSettings: { Networks: { bridge: { IPAddress: '10.77.0.5', GlobalIPv6Address: '' } } },
    ...more,
  };
}

function labelError(labels: Record<string, string>, more: Partial<InspectedContainer> = {}): LabelError {
  try {
    endpointFromContainer(container(labels, more), 'n1');
  } catch (err) {
    expect(err).toBeInstanceOf(LabelError);
    return err as LabelError;
  }
  throw new Error('expected a LabelError');
}

describe('Docker labels', () => {
  it('ignores containers without corral.service', () => {
    expect(endpointFromContainer(container(null), 'n1')).toBeNull();
    expect(endpointFromContainer(container({ 'com.example.x': '1' }), 'n1')).toBeNull();
  });

  it('fills the SPEC defaults from corral.service alone', () => {
    const ep = endpointFromContainer(container({ 'corral.service': 'Web' }), 'n1')!;
    expect(ep).toMatchObject({
      id: `docker:n1:${ID}`, service: 'web', namespace: 'default', address: '10.77.0.5', port: 80, portName: 'http',
      color: 'default', weight: 1, healthy: true, healthReason: 'no health check', origin: 'docker', node: 'n1',
      httpHosts: [], httpPath: '/', healthCheck: null, deploy: 'manual', drainMs: 10_000,
      containerId: ID, containerName: 'web-1', draining: false, lbBalance: '',
    });
  });

  it('uses the single exposed TCP port as the default port, else 80', () => {
    const one = container({ 'corral.service': 'web' }, {});
    one.Config.ExposedPorts = { '8080/tcp': {}, '53/udp': {} };
    expect(endpointFromContainer(one, 'n1')!.port).toBe(8080);
    const two = container({ 'corral.service': 'web' });
    two.Config.ExposedPorts = { '8080/tcp': {}, '9090/tcp': {} };
    expect(endpointFromContainer(two, 'n1')!.port).toBe(80);
    const labelled = container({ 'corral.service': 'web', 'corral.port': '3000' });
    labelled.Config.ExposedPorts = { '8080/tcp': {} };
    expect(endpointFromContainer(labelled, 'n1')!.port).toBe(3000);
  });

  it('reads every label', () => {
    const ep = endpointFromContainer(container({
      'corral.service': 'api',
      'corral.namespace': 'prod',
      'corral.port': '8080',
      'corral.port-name': 'grpc',
      'corral.http.host': 'api.example.com, *.api.example.com',
      'corral.http.path': '/v1',
      'corral.color': 'green',
      'corral.weight': '30',
      'corral.health.path': '/healthz',
      'corral.health.interval': '500ms',
      'corral.health.timeout': '250ms',
      'corral.health.rise': '3',
      'corral.health.fall': '4',
      'corral.deploy': 'auto',
      'corral.drain': '30s',
      'corral.lb.balance': 'least-request',
      'com.docker.compose.project': 'x',
    }), 'n1')!;
    expect(ep).toMatchObject({
      service: 'api', namespace: 'prod', port: 8080, portName: 'grpc', httpHosts: ['api.example.com', '*.api.example.com'],
      httpPath: '/v1', color: 'green', weight: 30, deploy: 'auto', drainMs: 30_000, lbBalance: 'least-request',
      healthCheck: { path: '/healthz', tcp: false, intervalMs: 500, timeoutMs: 250, rise: 3, fall: 4 },
      healthy: false, healthReason: 'waiting for the first health check',
    });
  });

  it('reads corral.lb.balance: round-robin or least-request, case and spaces ignored; absent means the LB\'s flag', () => {
    const lb = (v?: string) => endpointFromContainer(container({ 'corral.service': 'web', ...(v === undefined ? {} : { 'corral.lb.balance': v }) }), 'n1')!.lbBalance;
    expect(lb('round-robin')).toBe('round-robin');
    expect(lb('least-request')).toBe('least-request');
    expect(lb(' Least-Request ')).toBe('least-request');
    expect(lb()).toBe('');
  });

  it('reads the TCP and TLS routing labels: corral.tcp.port, corral.tls.sni, corral.tcp.proxy-protocol', () => {
    const ep = endpointFromContainer(container({
      'corral.service': 'db', 'corral.port': '5432', 'corral.tcp.port': '15432', 'corral.tls.sni': ' DB.example.com., *.db.example.com ', 'corral.tcp.proxy-protocol': 'v2',
    }), 'n1')!;
    expect(ep).toMatchObject({ port: 5432, tcpPort: 15432, tlsSni: ['db.example.com', '*.db.example.com'], proxyProtocol: 'v2' });
    expect(endpointFromContainer(container({ 'corral.service': 'web' }), 'n1')).toMatchObject({ tcpPort: 0, tlsSni: [], proxyProtocol: '' });
    expect(endpointFromContainer(container({ 'corral.service': 'db', 'corral.tcp.port': '5432', 'corral.tcp.proxy-protocol': 'off' }), 'n1')!.proxyProtocol).toBe('');
  });

  it.each([
    [{ 'corral.tcp.port': '0' }, 'corral.tcp.port', 'a port number from 1 to 65535'],
    [{ 'corral.tcp.port': '5432x' }, 'corral.tcp.port', 'a port number from 1 to 65535'],
    [{ 'corral.tls.sni': 'db example.com' }, 'corral.tls.sni', 'comma-separated TLS server names'],
    [{ 'corral.tls.sni': ' , ' }, 'corral.tls.sni', 'at least one TLS server name'],
    [{ 'corral.tls.sni': 'a.*.test' }, 'corral.tls.sni', 'comma-separated TLS server names'],
    [{ 'corral.tcp.port': '5432', 'corral.tcp.proxy-protocol': 'v1' }, 'corral.tcp.proxy-protocol', 'v2 (a PROXY protocol v2 header'],
    [{ 'corral.tcp.proxy-protocol': 'v2' }, 'corral.tcp.proxy-protocol', 'used only with corral.tcp.port or corral.tls.sni'],
  ])('refuses wrong TCP/TLS routing labels %o, naming the label', (labels, label, accepted) => {
    const e = labelError({ 'corral.service': 'db', ...labels });
    expect(e.label).toBe(label);
    expect(e.message).toContain(accepted);
  });

  it('uses the health check defaults 2s, 1s, 2, 2 and supports a TCP check', () => {
    expect(endpointFromContainer(container({ 'corral.service': 'web', 'corral.health.path': '/' }), 'n1')!.healthCheck)
      .toEqual({ path: '/', tcp: false, intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 2 });
    expect(endpointFromContainer(container({ 'corral.service': 'db', 'corral.health.tcp': 'true' }), 'n1')!.healthCheck)
      .toEqual({ path: '', tcp: true, intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 2 });
    expect(endpointFromContainer(container({ 'corral.service': 'db', 'corral.health.tcp': 'false' }), 'n1')!.healthCheck).toBeNull();
  });

  it('follows a Docker HEALTHCHECK when there is no Corral check', () => {
    const starting = endpointFromContainer(container({ 'corral.service': 'web' }, { State: { Health: { Status: 'starting' } } }), 'n1')!;
    expect(starting).toMatchObject({ healthy: false, healthReason: 'docker health: starting' });
    const healthy = endpointFromContainer(container({ 'corral.service': 'web' }, { State: { Health: { Status: 'healthy' } } }), 'n1')!;
    expect(healthy).toMatchObject({ healthy: true, healthReason: 'docker health: healthy' });
    // A Corral check is the authority when both exist.
    const both = endpointFromContainer(container({ 'corral.service': 'web', 'corral.health.path': '/' }, { State: { Health: { Status: 'healthy' } } }), 'n1')!;
    expect(both).toMatchObject({ healthy: false, healthReason: 'waiting for the first health check' });
  });

  it('takes the address of the first network with one, or of the network named by corral.network', () => {
    const networks = { none: { IPAddress: '' }, front: { IPAddress: '172.20.0.3' }, back: { IPAddress: '172.21.0.3' }, v6: { IPAddress: '', GlobalIPv6Address: 'fd00::3' } };
    expect(endpointSpecFromContainer(container({ 'corral.service': 'web' }, { NetworkSettings: { Networks: networks } }), 'n1')!.address).toBe('172.20.0.3');
    expect(endpointSpecFromContainer(container({ 'corral.service': 'web', 'corral.network': 'back' }, { NetworkSettings: { Networks: networks } }), 'n1')!.address).toBe('172.21.0.3');
    expect(endpointSpecFromContainer(container({ 'corral.service': 'web', 'corral.network': 'v6' }, { NetworkSettings: { Networks: networks } }), 'n1')!.address).toBe('fd00::3');
    const e = labelError({ 'corral.service': 'web', 'corral.network': 'nope' }, { NetworkSettings: { Networks: networks } });
    expect(e.message).toBe(`container "web-1" (abcdef012345) is not registered: label corral.network="nope" is not valid: the name of one of the container's networks with an address: front, back, v6`);
  });

  it('refuses a container without any address (host or none network mode)', () => {
    const e = labelError({ 'corral.service': 'web' }, { NetworkSettings: { Networks: { host: { IPAddress: '' } } } });
    expect(e.message).toMatch(/^container "web-1" \(abcdef012345\) is not registered: it has no IP address on any network/);
  });

  const bad: [string, Record<string, string>, string, string][] = [
    ['service', { 'corral.service': '' }, 'corral.service', 'a DNS label'],
    ['service', { 'corral.service': 'my_web' }, 'corral.service', 'a DNS label'],
    ['namespace', { 'corral.namespace': 'Prod!' }, 'corral.namespace', 'a DNS label'],
    ['port', { 'corral.port': '80/tcp' }, 'corral.port', 'a port number from 1 to 65535'],
    ['port', { 'corral.port': '70000' }, 'corral.port', 'a port number from 1 to 65535'],
    ['port name', { 'corral.port-name': '_http' }, 'corral.port-name', 'a DNS label'],
    ['host', { 'corral.http.host': 'a b.com' }, 'corral.http.host', 'comma-separated host names'],
    ['path', { 'corral.http.path': 'v1' }, 'corral.http.path', 'a path prefix starting with "/"'],
    ['color', { 'corral.color': 'blue green' }, 'corral.color', 'a DNS label'],
    ['weight', { 'corral.weight': '0' }, 'corral.weight', 'a whole number from 1 to 1000'],
    ['weight', { 'corral.weight': 'heavy' }, 'corral.weight', 'a whole number from 1 to 1000'],
    ['health path', { 'corral.health.path': 'healthz' }, 'corral.health.path', 'a path prefix starting with "/"'],
    ['interval', { 'corral.health.path': '/', 'corral.health.interval': 'often' }, 'corral.health.interval', 'a duration such as 500ms, 2s or 1m'],
    ['interval', { 'corral.health.path': '/', 'corral.health.interval': '0s' }, 'corral.health.interval', 'a duration above zero'],
    ['timeout', { 'corral.health.path': '/', 'corral.health.timeout': '90m' }, 'corral.health.timeout', 'a duration of at most 1h'],
    ['rise', { 'corral.health.path': '/', 'corral.health.rise': '-1' }, 'corral.health.rise', 'a whole number from 1 to 100'],
    ['fall', { 'corral.health.path': '/', 'corral.health.fall': '1000' }, 'corral.health.fall', 'a whole number from 1 to 100'],
    ['tcp', { 'corral.health.tcp': 'maybe' }, 'corral.health.tcp', 'true or false'],
    ['tcp with path', { 'corral.health.tcp': 'true', 'corral.health.path': '/' }, 'corral.health.path', 'not set together with corral.health.tcp=true'],
    ['tuning without check', { 'corral.health.interval': '5s' }, 'corral.health.interval', 'used only with corral.health.path or corral.health.tcp=true'],
    ['deploy', { 'corral.deploy': 'blue-green' }, 'corral.deploy', 'manual or auto'],
    ['drain', { 'corral.drain': 'forever' }, 'corral.drain', 'a duration such as 500ms, 2s or 1m'],
    ['lb balance', { 'corral.lb.balance': 'least-connections' }, 'corral.lb.balance', 'round-robin or least-request'],
    ['empty lb balance', { 'corral.lb.balance': '' }, 'corral.lb.balance', 'round-robin or least-request'],
    ['unknown', { 'corral.helth.path': '/' }, 'corral.helth.path', 'unknown label (a typo?); Corral reads corral.service, corral.namespace'],
  ];
  it.each(bad)('names the container, the label, the value and what is accepted: bad %s', (_what, labels, label, accepted) => {
    const all: Record<string, string> = { 'corral.service': 'web', ...labels };
    const e = labelError(all);
    expect(e.container).toBe('"web-1" (abcdef012345)');
    expect(e.label).toBe(label);
    expect(e.value).toBe(all[label]);
    expect(e.message).toContain(`container "web-1" (abcdef012345) is not registered: label ${label}="${all[label]}" is not valid: `);
    expect(e.message).toContain(accepted);
  });
});
