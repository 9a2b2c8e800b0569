// DNS on this node's block gateway (`--dns-listen gateway:53`): containers get the gateway as
// their nameserver (CNI result), so we listen there as soon as the agent's Host record for this
// node carries a block, and stop when the block goes. The address may appear on an interface a
// moment after the record (the agent brings the gateway up at the first attach): retry the bind.
import { isIPv4 } from 'node:net';
import type { Logger } from '../api/log.js';
import type { WatchEvent } from '../api/types.js';
import type { DnsServer } from './server.js';

const RETRY_MS = 1000;

/** The first usable address of an IPv4 block ("10.42.3.0/24" -> "10.42.3.1"), or null. */
export function blockGateway(block: string): string | null {
  const [net = '', bits] = block.split('/');
  if (!isIPv4(net) || bits === undefined) return null;
  const prefix = Number(bits);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > 30) return null;
  const n = net.split('.').reduce((a, o) => a * 256 + Number(o), 0);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const g = ((n & mask) >>> 0) + 1;
  return [g >>> 24, (g >>> 16) & 0xff, (g >>> 8) & 0xff, g & 0xff].join('.');
}

export class GatewayListeners {
  private block = '';
  private gateway: string | null = null;
  /** Ports bound on the current gateway. */
  private readonly bound = new Set<number>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private lastError = '';
  /** Reconciles run one at a time, in order. */
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly nodeName: string, private readonly ports: number[], private readonly server: DnsServer, private readonly log?: Logger) {}

  /** Follows this node's Host record in a watch event. */
  apply(ev: WatchEvent): void {
    if (this.ports.length === 0) return;
    let block = ev.snapshot ? '' : this.block;
    if (!ev.snapshot && ev.deletedHosts.includes(this.nodeName)) block = '';
    for (const h of ev.hosts) if (h.name === this.nodeName) block = h.block;
    if (block === this.block) return;
    this.block = block;
    this.schedule();
  }

  /** The gateway we serve (or try to), for the status page. */
  status(): { block: string; gateway: string | null; listening: boolean; error: string } {
    return { block: this.block, gateway: this.gateway, listening: this.bound.size === this.ports.length && this.gateway !== null, error: this.lastError };
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.chain;
  }

  private schedule(): void {
    this.chain = this.chain.then(() => this.reconcile()).catch((err: Error) => this.log?.warn({ err: err.message }, 'block gateway listener'));
  }

  private async reconcile(): Promise<void> {
    clearTimeout(this.timer);
    if (this.closed) return;
    const want = this.block ? blockGateway(this.block) : null;
    if (want !== this.gateway) {
      const old = this.gateway;
      this.gateway = want;
      if (old !== null) {
        for (const port of [...this.bound]) await this.server.removeListener(old, port);
        this.bound.clear();
        this.log?.info({ gateway: old }, 'DNS stopped listening on the old block gateway');
      }
    }
    if (want === null) return;
    for (const port of this.ports) {
      if (this.bound.has(port)) continue;
      try {
        await this.server.addListener(want, port);
        if (this.gateway !== want || this.closed) {
          await this.server.removeListener(want, port);
          return;
        }
        this.bound.add(port);
        this.lastError = '';
        this.log?.info({ gateway: want, port }, 'DNS listening on the block gateway');
      } catch (err) {
        const msg = (err as Error).message;
        if (msg !== this.lastError) this.log?.warn({ gateway: want, port, err: msg }, 'cannot listen on the block gateway yet; retrying');
        this.lastError = msg;
        this.timer = setTimeout(() => this.schedule(), RETRY_MS);
        this.timer.unref();
        return;
      }
    }
  }
}
