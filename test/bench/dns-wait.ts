// Runs inside a test host's namespace for overlay.ts: for each line {"t0":epochMs,"name":dnsName}
// it polls `corral dns` on 127.0.0.1:<port> every 2 ms until the name has an A record and prints
// {"ms":elapsed since t0} (null after 10 s). Its first line {"ready":true} says it polls.
import { Resolver } from 'node:dns/promises';
import { createInterface } from 'node:readline';

const port = Number(process.argv[2]);
const resolver = new Resolver({ timeout: 200, tries: 1 });
resolver.setServers([`127.0.0.1:${port}`]);

process.stdout.write(JSON.stringify({ ready: true }) + '\n');
createInterface({ input: process.stdin }).on('line', (line) => {
  const { t0, name } = JSON.parse(line) as { t0: number; name: string };
  void (async () => {
    while (Date.now() - t0 < 10_000) {
      if (((await resolver.resolve4(name).catch(() => [])) as string[]).length > 0) {
        process.stdout.write(JSON.stringify({ ms: Date.now() - t0 }) + '\n');
        return;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    process.stdout.write(JSON.stringify({ ms: null }) + '\n');
  })();
});
