// The soak's HTTP load: a paced request loop run inside a test host's netns (the LB listens on
// that namespace's loopback). Unlike wrk, it timestamps every failed request, so the soak can
// attribute each one to a fault window. Output, one JSON object a line on stdout:
//   {"ok":N,"fail":M}                      every second, totals so far
//   {"failAt":ms,"why":"..."}               each failed request (wall clock, ms)
// Usage: node --import tsx http-load.ts <url> <host header> <requests/s> <concurrency> <body regexp>
import { Agent, request } from 'node:http';

const [url, hostHeader, rpsArg, concArg, bodyRe] = process.argv.slice(2);
if (!url || !hostHeader || !rpsArg || !concArg || !bodyRe) {
  process.stderr.write('usage: http-load.ts <url> <host> <rps> <concurrency> <body regexp>\n');
  process.exit(2);
}
const rps = Number(rpsArg);
const concurrency = Number(concArg);
const want = new RegExp(bodyRe);
const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
let ok = 0;
let fail = 0;
let stopping = false;

function once(): Promise<void> {
  return new Promise((resolve) => {
    const done = (why?: string) => {
      if (why === undefined) ok++;
      else {
        fail++;
        process.stdout.write(JSON.stringify({ failAt: Date.now(), why }) + '\n');
      }
      resolve();
    };
    const req = request(url!, { agent, headers: { host: hostHeader }, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => done(res.statusCode === 200 && want.test(body.trim()) ? undefined : `status ${res.statusCode}: ${body.trim().slice(0, 120)}`));
      res.on('error', (err) => done(`response: ${err.message}`));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 5 s')));
    req.on('error', (err) => done(err.message));
    req.end();
  });
}

async function worker(): Promise<void> {
  const gapMs = (1000 * concurrency) / rps;
  let next = Date.now();
  while (!stopping) {
    await once();
    next += gapMs;
    const wait = next - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    else next = Date.now(); // behind (a fault, a busy machine): no burst to catch up
  }
}

const report = () => process.stdout.write(JSON.stringify({ ok, fail }) + '\n');
const timer = setInterval(report, 1000);
process.on('SIGTERM', () => {
  stopping = true;
});
await Promise.all(Array.from({ length: concurrency }, worker));
clearInterval(timer);
report();
agent.destroy();
