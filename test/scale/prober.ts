// What a user on a real test host sees, from inside that host's netns: `corral dns` answering a
// name with an address and `corral lb` routing a Host to a backend (HTTP 200). Runs as a child
// (node --import tsx test/scale/prober.ts <dnsPort> <httpPort>, under nsenter), driven by JSON
// lines on stdin, answering JSON lines on stdout with this machine's wall clock (Date.now()),
// which the bench shares, so times are comparable across processes.
//   {"op":"watch","id":"p1","name":"probe-1.default.corral.internal","addr":"10.64.0.5","host":"probe-1.test"}
//     polls every 5 ms until DNS answers the name with addr and the LB answers 200 for the host:
//     {"id":"p1","dnsAt":…,"lbAt":…} (null for whichever did not happen within 20 s)
//   {"op":"steady",…same fields…}: checks that name and host every 50 ms until the end;
//   {"op":"stats"}: {"stats":{"dnsOk":…,"dnsFail":…,"lbOk":…,"lbFail":…,"lbWhy":{reason:count}}} since the last stats.
import { createSocket } from 'node:dgram';
import { Agent, request } from 'node:http';
import { createInterface } from 'node:readline';

const dnsPort = Number(process.argv[2]);
const httpPort = Number(process.argv[3]);
const POLL_MS = 5;
const GIVE_UP_MS = 20_000;

interface Target { name: string; addr: string; host: string }
interface Watch extends Target { id: string; since: number; dnsAt: number | null; lbAt: number | null; lbBusy: boolean }

const sock = createSocket('udp4');
const agent = new Agent({ keepAlive: true, maxSockets: 64 });
const byQid = new Map<number, { want: Buffer; done: (answered: boolean) => void }>();
let qid = 1;
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');

function dnsQuery(id: number, name: string): Buffer {
  const parts = [Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])];
  for (const l of name.split('.')) if (l) parts.push(Buffer.from([l.length]), Buffer.from(l));
  parts.push(Buffer.from([0, 0, 1, 0, 1])); // root, A, IN
  return Buffer.concat(parts);
}

sock.on('message', (m) => {
  const id = m.readUInt16BE(0);
  const q = byQid.get(id);
  if (!q) return;
  byQid.delete(id);
  q.done((m[3]! & 15) === 0 && m.readUInt16BE(6) > 0 && m.includes(q.want, 12));
});

/** One A query; true when the answer holds addr. */
function dns(t: Target): Promise<boolean> {
  return new Promise((res) => {
    const id = (qid = (qid % 65535) + 1);
    const timer = setTimeout(() => {
      byQid.delete(id);
      res(false);
    }, 1000);
    byQid.set(id, { want: Buffer.from(t.addr.split('.').map(Number)), done: (ok) => {
      clearTimeout(timer);
      res(ok);
    } });
    sock.send(dnsQuery(id, t.name), dnsPort, '127.0.0.1');
  });
}

/** Why steady LB checks failed since the last stats: "timeout (1 s)", "status 502", "error ECONNRESET". */
const lbWhy: Record<string, number> = {};

/** One GET / with the Host; true on 200. */
function lb(t: Target, why?: Record<string, number>): Promise<boolean> {
  return new Promise((res) => {
    let timedOut = false;
    const fail = (reason: string) => {
      if (why) why[reason] = (why[reason] ?? 0) + 1;
      res(false);
    };
    const req = request({ host: '127.0.0.1', port: httpPort, path: '/', headers: { host: t.host }, agent, timeout: 1000 }, (r) => {
      r.resume();
      r.on('end', () => (r.statusCode === 200 ? res(true) : fail(`status ${r.statusCode}`)));
      r.on('error', (e: NodeJS.ErrnoException) => fail(`response error ${e.code ?? e.message}`));
    });
    req.on('timeout', () => {
      timedOut = true;
      req.destroy();
    });
    req.on('error', (e: NodeJS.ErrnoException) => fail(timedOut ? 'timeout (1 s)' : `error ${e.code ?? e.message}`));
    req.end();
  });
}

const watches = new Map<string, Watch>();
const dnsBusy = new Set<string>();
setInterval(() => {
  const now = Date.now();
  for (const w of watches.values()) {
    if (w.dnsAt === null && !dnsBusy.has(w.id)) {
      dnsBusy.add(w.id);
      void dns(w).then((ok) => {
        dnsBusy.delete(w.id);
        if (ok && w.dnsAt === null) w.dnsAt = Date.now();
      });
    }
    if (w.lbAt === null && !w.lbBusy) {
      w.lbBusy = true;
      void lb(w).then((ok) => {
        w.lbBusy = false;
        if (ok && w.lbAt === null) w.lbAt = Date.now();
      });
    }
    if ((w.dnsAt !== null && w.lbAt !== null) || now - w.since > GIVE_UP_MS) {
      watches.delete(w.id);
      out({ id: w.id, dnsAt: w.dnsAt, lbAt: w.lbAt });
    }
  }
}, POLL_MS);

const stats = { dnsOk: 0, dnsFail: 0, lbOk: 0, lbFail: 0 };
const steady: Target[] = [];
setInterval(() => {
  for (const t of steady) {
    void dns(t).then((ok) => void (ok ? stats.dnsOk++ : stats.dnsFail++));
    void lb(t, lbWhy).then((ok) => void (ok ? stats.lbOk++ : stats.lbFail++));
  }
}, 50);

sock.bind(0, '127.0.0.1', () => out({ ready: true }));
createInterface({ input: process.stdin }).on('line', (line) => {
  const m = JSON.parse(line) as { op: string; id?: string } & Target;
  if (m.op === 'watch') watches.set(m.id!, { id: m.id!, name: m.name, addr: m.addr, host: m.host, since: Date.now(), dnsAt: null, lbAt: null, lbBusy: false });
  else if (m.op === 'steady') steady.push({ name: m.name, addr: m.addr, host: m.host });
  else if (m.op === 'stats') {
    out({ stats: { ...stats, lbWhy: { ...lbWhy } } });
    stats.dnsOk = stats.dnsFail = stats.lbOk = stats.lbFail = 0;
    for (const k of Object.keys(lbWhy)) delete lbWhy[k];
  }
}).on('close', () => process.exit(0));
