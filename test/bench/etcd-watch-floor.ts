// The floor under the agent's CPU per registry change: a process that only watches /corral/ through
// the agent's own etcd client (agent/registry/etcd.ts, etcd3 over grpc-js) and does nothing with
// the events. agent-churn.ts runs it beside the agent under the same churn.
// Run: node --import tsx test/bench/etcd-watch-floor.ts <host:port>
import { EtcdRegistry } from '../../agent/registry/etcd.js';

const r = new EtcdRegistry({ endpoints: [process.argv[2]!] });
await r.open();
const { revision } = await r.range('/corral/');
let events = 0;
r.watch('/corral/', revision, (b) => void (events += b.events.length), () => process.stderr.write('etcd-watch-floor: watch cancelled\n'));
process.on('SIGTERM', () => {
  process.stdout.write(`${events}\n`);
  process.exit(0);
});
