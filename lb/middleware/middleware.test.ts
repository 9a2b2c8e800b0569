// The edge labels against real requests: an LB run in this process (runLb, one thread) fed
// endpoint records that carry them, real HTTP backends, curl as the client. Redirect and HSTS,
// IP allow-list, rate limit, basic auth from a password file, header set/remove, strip-prefix;
// a route whose labels are bad answers 503 saying why while the others keep serving; the agent
// refuses a container with a bad edge label, naming it.
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { endpointSpecFromContainer, LabelError } from '../../agent/docker/labels.js';
import { makeLogger } from '../../api/log.js';
import { defaultOptions, LB_DEFAULTS } from '../../api/options.js';
import { freePort } from '../../test/support/corral.js';
import { curl, memoryWatch, selfSigned } from '../../test/support/edge.js';
import { Backend, backendEndpoint, startBackends } from '../../test/support/lb.js';
import { snapshot } from '../../test/support/records.js';
import { runLb, type RunningLb } from '../main.js';
import { hashPassword } from './auth.js';

let dir: string;
let lb: RunningLb;
let backends: Backend[];
let http = '';
let https = '';

const hosts = ['redir.test', 'allow.test', 'deny.test', 'rl.test', 'auth.test', 'hdr.test', 'strip.test', 'bad.test', 'plain.test'];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'edge-mw-'));
  const certs = join(dir, 'certs');
  const auth = join(dir, 'auth');
  mkdirSync(certs);
  mkdirSync(auth);
  await selfSigned(certs, ['redir.test']);
  writeFileSync(join(auth, 'team'), `# users of the team routes\nalice:${await hashPassword('wonderland', randomBytes(16), 1024)}\n`);
  backends = await startBackends(['b1']);
  const b = backends[0]!;
  const httpsPort = await freePort();
  const ep = (svc: string, edge: Record<string, string>, path = '/') => backendEndpoint(b, svc, { httpHosts: [`${svc}.test`], httpPath: path, edge });
  const watch = memoryWatch();
  await watch.push(snapshot(1, [
    ep('redir', { 'corral.http.redirect': 'https', 'corral.http.hsts': '31536000,includeSubDomains' }),
    ep('allow', { 'corral.http.allow': '10.0.0.0/8,127.0.0.1' }),
    ep('deny', { 'corral.http.allow': '10.0.0.0/8, fd00::/8' }),
    ep('rl', { 'corral.http.rate-limit': '5/m' }),
    ep('auth', { 'corral.http.auth.basic': 'team' }),
    ep('hdr', {
      'corral.http.request.set-header.X-Env': 'prod', 'corral.http.request.remove-headers': 'X-Drop-Me',
      'corral.http.response.set-header.X-Served-By': 'corral', 'corral.http.response.remove-headers': 'X-Color',
    }),
    ep('strip', { 'corral.http.strip-prefix': 'true' }, '/api'),
    ep('bad', { 'corral.http.rate-limit': 'fast' }),
    ep('plain', {}),
  ]));
  lb = await runLb({
    ...defaultOptions(),
    stateDir: dir,
    httpListen: `127.0.0.1:${await freePort()}`,
    adminListen: `127.0.0.1:${await freePort()}`,
    lb: { ...LB_DEFAULTS, threads: 1, tlsCertDir: certs, httpsListen: `127.0.0.1:${httpsPort}`, authDir: auth },
  }, makeLogger('lb', 'silent'), { watch: watch.source });
  http = `http://127.0.0.1:${lb.port}`;
  https = `https://redir.test:${lb.httpsPort}`;
});

afterAll(async () => {
  await lb?.close();
  await Promise.all((backends ?? []).map((b) => b.stop()));
  rmSync(dir, { recursive: true, force: true });
});

const get = (host: string, path = '/', ...args: string[]) => curl(['-H', `Host: ${host}`, ...args, `${http}${path}`]);

describe('edge labels on real requests', () => {
  it('redirects plain HTTP to HTTPS (308, same host, path and query) and adds HSTS over HTTPS only', async () => {
    const r = await get('redir.test', '/a/b?x=1');
    expect(r.status).toBe(308);
    expect(r.headers.location).toBe(`https://redir.test:${lb.httpsPort}/a/b?x=1`);
    expect(r.headers['strict-transport-security']).toBeUndefined();
    const s = await curl(['-k', '--resolve', `redir.test:${lb.httpsPort}:127.0.0.1`, `${https}/a`]);
    expect(s.status).toBe(200);
    expect(s.body).toBe('b1 default\n');
    expect(s.headers['strict-transport-security']).toBe('max-age=31536000; includeSubDomains');
    // The same over HTTP/2.
    const h2 = await curl(['-k', '--http2', '--resolve', `redir.test:${lb.httpsPort}:127.0.0.1`, `${https}/a`]);
    expect(h2.status).toBe(200);
    expect(h2.headers['strict-transport-security']).toBe('max-age=31536000; includeSubDomains');
    // curl follows the redirect itself.
    const f = await curl(['-k', '-L', '--resolve', `redir.test:${lb.httpsPort}:127.0.0.1`, '--resolve', `redir.test:${lb.port}:127.0.0.1`, `http://redir.test:${lb.port}/followed`]);
    expect(f.status).toBe(200);
  });

  it('IP allow-list: a listed client is served, others get 403 naming their address', async () => {
    expect((await get('allow.test')).status).toBe(200);
    const d = await get('deny.test');
    expect(d.status).toBe(403);
    expect(d.body).toContain('127.0.0.1 is not in this route\'s allow-list');
  });

  it('rate limit per client: the burst passes, the rest get 429 with Retry-After; other routes are not limited', async () => {
    const codes: number[] = [];
    for (let i = 0; i < 8; i++) codes.push((await get('rl.test')).status);
    expect(codes).toEqual([200, 200, 200, 200, 200, 429, 429, 429]);
    const r = await get('rl.test');
    expect(Number(r.headers['retry-after'])).toBeGreaterThan(0);
    // Another client address has a bucket of its own.
    expect((await get('rl.test', '/', '--interface', '127.0.0.2')).status).toBe(200);
    for (let i = 0; i < 8; i++) expect((await get('plain.test')).status).toBe(200);
  });

  it('basic auth from a password file: 401 without or with wrong credentials, served with the right ones; the endpoint never sees them', async () => {
    const none = await get('auth.test');
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toBe('Basic realm="team", charset="UTF-8"');
    expect((await get('auth.test', '/', '-u', 'alice:rabbit')).status).toBe(401);
    expect((await get('auth.test', '/', '-u', 'bob:wonderland')).status).toBe(401);
    const ok = await get('auth.test', '/headers', '-u', 'alice:wonderland');
    expect(ok.status).toBe(200);
    const seen = JSON.parse(ok.body) as { headers: Record<string, string> };
    expect(seen.headers.authorization).toBeUndefined();
    // Again on one keep-alive connection (the verified value is cached), and a POST with a body waiting behind the check.
    const two = await curl(['-u', 'alice:wonderland', '-H', 'Host: auth.test', `${http}/`, '--next', '-u', 'alice:wonderland', '-H', 'Host: auth.test', '--data', 'hello', `${http}/echo`]);
    expect(two.status).toBe(200);
    expect(two.body).toMatch(/^b1 default\n.*hello$/s);
  });

  it('sets and removes request and response headers', async () => {
    const r = await get('hdr.test', '/headers', '-H', 'X-Drop-Me: secret', '-H', 'X-Env: dev', '-H', 'X-Keep: yes');
    expect(r.status).toBe(200);
    const seen = JSON.parse(r.body) as { headers: Record<string, string> };
    expect(seen.headers['x-env']).toBe('prod');
    expect(seen.headers['x-drop-me']).toBeUndefined();
    expect(seen.headers['x-keep']).toBe('yes');
    expect(r.headers['x-served-by']).toBe('corral');
    expect(r.headers['x-color']).toBeUndefined();
    expect(r.headers['x-backend']).toBe('b1');
  });

  it('strips the route\'s path prefix and says which in X-Forwarded-Prefix', async () => {
    const r = await get('strip.test', '/api/headers?q=1');
    const seen = JSON.parse(r.body) as { url: string; headers: Record<string, string> };
    expect(seen.url).toBe('/headers?q=1');
    expect(seen.headers['x-forwarded-prefix']).toBe('/api');
    expect(seen.headers.host).toBe('strip.test');
    const root = await get('strip.test', '/api');
    expect(root.status).toBe(200);
    expect(root.body).toBe('b1 default\n');
  });

  it('applies the same middlewares to HTTP/2 streams: basic auth, header set/remove, strip-prefix, a bad route\'s 503', async () => {
    const h2 = (host: string, path: string, ...args: string[]) =>
      curl(['-k', '--http2', '--resolve', `${host}:${lb.httpsPort}:127.0.0.1`, ...args, `https://${host}:${lb.httpsPort}${path}`]);
    const none = await h2('auth.test', '/');
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toBe('Basic realm="team", charset="UTF-8"');
    const ok = await h2('auth.test', '/headers', '-u', 'alice:wonderland');
    expect(ok.status).toBe(200);
    expect((JSON.parse(ok.body) as { headers: Record<string, string> }).headers.authorization).toBeUndefined();
    const hdr = await h2('hdr.test', '/headers', '-H', 'X-Drop-Me: secret', '-H', 'X-Env: dev', '-H', 'X-Keep: yes');
    const seen = JSON.parse(hdr.body) as { headers: Record<string, string> };
    expect([seen.headers['x-env'], seen.headers['x-drop-me'], seen.headers['x-keep']]).toEqual(['prod', undefined, 'yes']);
    expect([hdr.headers['x-served-by'], hdr.headers['x-color'], hdr.headers['x-backend']]).toEqual(['corral', undefined, 'b1']);
    const strip = JSON.parse((await h2('strip.test', '/api/headers?q=1')).body) as { url: string; headers: Record<string, string> };
    expect([strip.url, strip.headers['x-forwarded-prefix']]).toEqual(['/headers?q=1', '/api']);
    const bad = await h2('bad.test', '/');
    expect(bad.status).toBe(503);
    expect(bad.body).toContain('label corral.http.rate-limit="fast" is not valid');
  });

  it('a route with bad edge labels answers 503 saying why; the others keep serving', async () => {
    const r = await get('bad.test');
    expect(r.status).toBe(503);
    expect(r.body).toContain('label corral.http.rate-limit="fast" is not valid');
    expect((await get('plain.test')).status).toBe(200);
  });

  it('the agent refuses a container with a bad edge label, naming it and what is accepted', () => {
    const c = (labels: Record<string, string>) => ({
      Id: 'c'.repeat(64), Name: '/web1', Config: { Labels: { 'corral.service': 'web', ...labels } },
      NetworkSettings: { Networks: { bridge: { IPAddress: '172.17.0.2' } } },
    });
    expect(() => endpointSpecFromContainer(c({ 'corral.http.allow': '10.0.0.0/33' }), 'n1')).toThrow(LabelError);
    expect(() => endpointSpecFromContainer(c({ 'corral.http.request.set-header.Content-Length': '5' }), 'n1')).toThrow(/content-length/);
    expect(() => endpointSpecFromContainer(c({ 'corral.http.tls': 'letsencrypt' }), 'n1')).toThrow(/corral.http.tls="letsencrypt" is not valid: acme/);
    const spec = endpointSpecFromContainer(c({ 'corral.http.tls': 'acme', 'corral.http.request.set-header.X-A': '1' }), 'n1')!;
    expect(spec.edge).toEqual({ 'corral.http.request.set-header.X-A': '1', 'corral.http.tls': 'acme' });
  });
});
