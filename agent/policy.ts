// nftables for attachments: namespace isolation (traffic between containers of different
// namespaces is dropped in the forward hook) and ipMasq (outbound traffic to non-cluster
// addresses is masqueraded). Per packet the kernel decides from sets and a verdict map; this
// file only changes set elements, with one `nft -f -` per ADD/DEL (nothing in the netlink
// package speaks nf_tables) and a full rebuild when the agent starts. Changes apply one at a
// time in call order, so a caller may leave a removal running (DEL does) and an add of the same
// address made later still lands after it.
import { spawn } from 'node:child_process';

const TABLE = 'ip corral';

function chainOf(ns: string): string {
  return `ns_${ns.replace(/-/g, '_')}`;       // DNS labels have no "_", so this stays unique
}
function setOf(ns: string): string {
  return `m_${ns.replace(/-/g, '_')}`;
}

export interface PolicyMember {
  address: string;
  namespace: string;
  masq: boolean;
}

export class Policy {
  private readonly namespaces = new Set<string>();
  private ready = false;
  /** The last change queued; each change starts when the one before it has settled. */
  private tail: Promise<unknown> = Promise.resolve();

  /** dockerRange: Docker's containers (agent/docker/defaults.ts), of namespace `default`, masqueraded to non-cluster addresses. */
  constructor(private readonly clusterCidr: string, private readonly dockerRange = '') {}

  private queue<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.tail.then(fn, fn);
    this.tail = p.catch(() => undefined);
    return p;
  }

  /** Waits for every change queued so far. */
  async settled(): Promise<void> {
    await this.tail;
  }

  /** Replaces the table with one holding exactly `members`. */
  rebuild(members: PolicyMember[]): Promise<void> {
    return this.queue(() => this.rebuildNow(members));
  }

  private async rebuildNow(members: PolicyMember[]): Promise<void> {
    this.namespaces.clear();
    const lines = [
      `table ${TABLE}`,
      `delete table ${TABLE}`,
      `table ${TABLE} {`,
      '  set pods { type ipv4_addr; }',
      '  set masq { type ipv4_addr; }',
      '  map nsof { type ipv4_addr : verdict; }',
      '  chain forward { type filter hook forward priority 0; policy accept; ip daddr vmap @nsof; }',
      `  chain postrouting { type nat hook postrouting priority 100; policy accept; ip saddr @masq ip daddr != ${this.clusterCidr} masquerade;${this.dockerRange ? ` ip saddr ${this.dockerRange} ip daddr != ${this.clusterCidr} masquerade;` : ''} }`,
      '}',
    ];
    for (const m of members) lines.push(...this.addLines(m));
    await nft(lines.join('\n'));
    this.ready = true;
  }

  get isReady(): boolean {
    return this.ready;
  }

  add(m: PolicyMember): Promise<void> {
    return this.queue(async () => {
      const fresh = !this.namespaces.has(m.namespace);
      try {
        await nft(this.addLines(m).join('\n'));
      } catch (err) {
        if (fresh) this.namespaces.delete(m.namespace);   // its chain was not made: make it next time
        throw err;
      }
    });
  }

  remove(m: PolicyMember): Promise<void> {
    return this.queue(() => this.removeNow(m));
  }

  private async removeNow(m: PolicyMember): Promise<void> {
    const lines = [
      `delete element ${TABLE} pods { ${m.address} }`,
      `delete element ${TABLE} nsof { ${m.address} }`,
      `delete element ${TABLE} ${setOf(m.namespace)} { ${m.address} }`,
    ];
    if (m.masq) lines.push(`delete element ${TABLE} masq { ${m.address} }`);
    // One transaction in the common case; one by one only when some element is already gone
    // (nft rejects the whole batch then, and the others must still go).
    await nft(lines.join('\n')).catch(async () => {
      for (const l of lines) await nft(l).catch(() => undefined);
    });
  }

  close(): Promise<void> {
    return this.queue(async () => {
      if (this.ready) await nft(`delete table ${TABLE}`).catch(() => undefined);
      this.ready = false;
    });
  }

  private addLines(m: PolicyMember): string[] {
    const out: string[] = [];
    if (!this.namespaces.has(m.namespace)) {
      const set = setOf(m.namespace);
      const chain = chainOf(m.namespace);
      out.push(
        `add set ${TABLE} ${set} { type ipv4_addr; }`,
        `add chain ${TABLE} ${chain}`,
        `flush chain ${TABLE} ${chain}`,
        `add rule ${TABLE} ${chain} ip saddr @${set} accept`,
        `add rule ${TABLE} ${chain} ip saddr @pods drop`,
      );
      if (this.dockerRange && m.namespace !== 'default') out.push(`add rule ${TABLE} ${chain} ip saddr ${this.dockerRange} drop`);
      this.namespaces.add(m.namespace);
    }
    out.push(
      `add element ${TABLE} pods { ${m.address} }`,
      `add element ${TABLE} ${setOf(m.namespace)} { ${m.address} }`,
      `add element ${TABLE} nsof { ${m.address} : jump ${chainOf(m.namespace)} }`,
    );
    if (m.masq) out.push(`add element ${TABLE} masq { ${m.address} }`);
    return out;
  }
}

function nft(script: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn('nft', ['-f', '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d: Buffer) => (err += d));
    c.once('error', (e) => reject(new Error(`cannot run nft (install nftables): ${e.message}`)));
    c.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`nft failed: ${err.trim()}`))));
    c.stdin.end(script + '\n');
  });
}
