// Runs inside the test namespace for docker-to-serving.ts: for each request line
// {"t0":epochMs,"name":dnsName,"host":httpHost} it polls Corral's DNS and LB, and after a line
// {"ip":addr} the container directly, every 2 ms; it prints {"dns":ms,"lb":ms,"direct":ms}.
import { Resolver } from 'node:dns/promises';
import { createInterface } from 'node:readline';
import { request } from 'undici';

const [dnsPort, httpPort] = process.argv.slice(2).map(Number);
const resolver = new Resolver({ timeout: 200, tries: 1 });
resolver.setServers([`127.0.0.1:${dnsPort}`]);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function firstSuccess(t0: number, attempt: () => Promise<boolean>, limitMs = 20_000): Promise<number> {
  while (Date.now() - t0 < limitMs) {
    if (await attempt().catch(() => false)) return Date.now() - t0;
    await sleep(2);
  }
  return NaN;
}

let current: { t0: number; ip?: string } | undefined;
const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const msg = JSON.parse(line) as { t0?: number; name?: string; host?: string; ip?: string };
  if (msg.ip && current) {
    current.ip = msg.ip;
    return;
  }
  const job = { t0: msg.t0!, ip: undefined as string | undefined };
  current = job;
  const dns = firstSuccess(job.t0, async () => (await resolver.resolve4(msg.name!)).length > 0);
  const lb = firstSuccess(job.t0, async () => {
    const r = await request(`http://127.0.0.1:${httpPort}/`, { headers: { host: msg.host! }, headersTimeout: 500 });
    await r.body.dump();
    return r.statusCode === 200;
  });
  const direct = firstSuccess(job.t0, async () => {
    if (!job.ip) return false;
    const r = await request(`http://${job.ip}:8080/`, { headersTimeout: 500 });
    await r.body.dump();
    return r.statusCode === 200;
  });
  void Promise.all([dns, lb, direct]).then(([d, l, x]) => process.stdout.write(JSON.stringify({ dns: d, lb: l, direct: x }) + '\n'));
});
