// Container attachments, whoever asks: every CNI verb the corral-cni plugin relays, and the same
// IPAM, wiring and policy for Docker's network driver (dockernet/). It validates the config,
// allocates from IPAM (journal fsync'd first), wires the veth pair, applies the namespace and
// ipMasq policy, publishes the Allocation record, and answers with the CNI result or a spec
// error code. A failed ADD leaves no interface and no allocation behind.
// Latency: ADD answers once the address is durable, the interface configured and the policy in
// place (the nft change runs beside the netlink work); DEL answers once the interface and its
// nft elements are gone (removed side by side, after the pair is down) and the address freed.
// The registry record of either follows the answer, in order (List waits for it); a crash
// before it is repaired at start, where the records are made to match the IPAM, and a failure
// (registry away) by a repair retried until the registry takes it.
import { existsSync, writeFileSync } from 'node:fs';
import type { Logger } from '../api/log.js';
import type { Allocation, CniReply, CniRequest } from '../api/types.js';
import { attach, detach, ensureGateway, hostIfnameFor, inspect } from './attach/veth.js';
import { NetnsGone } from './attach/netns.js';
import { attachmentKey, Ipam, IpamExhausted, PENDING_NETWORK, type IpamRecord } from './ipam.js';
import { Policy } from './policy.js';
import { attachmentNamespace, cniArg, CniCode, CniError, DEFAULT_MTU, parseNetConf, type CniResult, type NetConf } from '../api/cni.js';

export const GATEWAY_LINK = 'corral-gw';
const REPAIR_FIRST_MS = 1000;
const REPAIR_MAX_MS = 10_000;

function podName(args: string): string {
  return cniArg(args, 'K8S_POD_NAME');
}

export interface Publisher {
  publish(a: Allocation): Promise<void>;
  unpublish(address: string): Promise<void>;
  /** Makes the registry's Allocation records of this node match the IPAM (after a failed publish or unpublish). */
  repair(): Promise<void>;
}

export class Attachments {
  private readonly policy: Policy;
  private dataplane: Promise<void> | undefined;
  /** Attachments being added or deleted, so a DEL racing its own ADD waits for it. */
  private readonly busy = new Map<string, Promise<unknown>>();
  /** Registry changes left running after an answer, applied in order. */
  private registryTail: Promise<void> = Promise.resolve();
  /** A repair of the registry's records, pending after a publish or unpublish failed. */
  private repairTimer: NodeJS.Timeout | undefined;
  private repairDelayMs = REPAIR_FIRST_MS;
  private closed = false;

  constructor(
    readonly ipam: Ipam,
    private readonly o: { node: string; clusterCidr: string; dnsDomain: string; overlayMtu?: () => number; dockerRange?: string },
    private readonly pub: Publisher,
    private readonly log: Logger,
  ) {
    this.policy = new Policy(o.clusterCidr, o.dockerRange);
  }

  /** The container MTU: the config's, else the overlay's (so packets fit WireGuard), else DEFAULT_MTU. */
  mtu(configured?: number): number {
    return configured ?? (this.o.overlayMtu?.() || DEFAULT_MTU);
  }

  /** Brings up the gateway, forwarding and the nft table: at the first ADD, or at start when containers exist. */
  ensureDataplane(): Promise<void> {
    this.dataplane ??= (async () => {
      writeFileSync('/proc/sys/net/ipv4/ip_forward', '1');
      await ensureGateway(GATEWAY_LINK, this.ipam.gateway);
      await this.policy.rebuild(this.ipam.list().filter((r) => r.network !== PENDING_NETWORK).map((r) => ({ address: r.address, namespace: r.namespace, masq: r.masq })));
    })().catch((err: Error) => {
      this.dataplane = undefined;
      throw err;
    });
    return this.dataplane;
  }

  async start(): Promise<void> {
    if (this.ipam.list().length) await this.ensureDataplane();
  }

  async handle(req: CniRequest): Promise<CniReply> {
    try {
      const result = await this.dispatch(req);
      return { result: Buffer.from(result ? JSON.stringify(result) : ''), code: 0, msg: '', details: '' };
    } catch (err) {
      if (err instanceof CniError) return { result: Buffer.alloc(0), code: err.code, msg: err.message, details: err.details };
      this.log.error({ err, command: req.command, container: req.containerId }, 'CNI call failed');
      return { result: Buffer.alloc(0), code: CniCode.io, msg: `corral agent: ${(err as Error).message}`, details: '' };
    }
  }

  private async dispatch(req: CniRequest): Promise<CniResult | undefined> {
    if (req.command === 'STATUS') return undefined;
    const conf = parseNetConf(req.config);
    switch (req.command) {
      case 'ADD': return this.serial(req, () => this.add(req, conf));
      case 'DEL': return this.serial(req, () => this.del(req.containerId, req.ifname)).then(() => undefined);
      case 'CHECK': return this.check(req, conf).then(() => undefined);
      case 'GC': return this.gc(conf).then(() => undefined);
      default: throw new CniError(CniCode.badEnv, `CNI_COMMAND "${req.command}" is not one of ADD, DEL, CHECK, GC, STATUS, VERSION`);
    }
  }

  private async serial<T>(req: CniRequest, fn: () => Promise<T>): Promise<T> {
    const key = attachmentKey(req.containerId, req.ifname);
    const prev = this.busy.get(key) ?? Promise.resolve();
    const p = prev.catch(() => undefined).then(fn);
    this.busy.set(key, p);
    try {
      return await p;
    } finally {
      if (this.busy.get(key) === p) this.busy.delete(key);
    }
  }

  private async add(req: CniRequest, conf: NetConf): Promise<CniResult> {
    if (!req.containerId) throw new CniError(CniCode.badEnv, 'CNI_CONTAINERID is not set');
    if (!req.netns) throw new CniError(CniCode.badEnv, 'CNI_NETNS is not set: ADD needs the container network namespace path');
    if (!req.ifname) throw new CniError(CniCode.badEnv, 'CNI_IFNAME is not set');
    if (!existsSync(req.netns)) throw new CniError(CniCode.badEnv, `CNI_NETNS ${req.netns} does not exist`);
    await this.ensureDataplane();
    const namespace = attachmentNamespace(conf, req.args);
    const held = this.ipam.get(req.containerId, req.ifname);
    if (held) throw new CniError(CniCode.duplicate, `container ${req.containerId} already has ${req.ifname} with ${held.address}: DEL it before adding it again`);
    let rec: IpamRecord;
    try {
      rec = this.ipam.allocate({
        containerId: req.containerId, ifname: req.ifname, namespace, network: conf.name, netns: req.netns,
        name: podName(req.args), hostIfname: hostIfnameFor(req.containerId, req.ifname), masq: conf.ipMasq,
      });
    } catch (err) {
      if (err instanceof IpamExhausted) throw new CniError(CniCode.exhausted, err.message);
      throw err;
    }
    // The container runs only after the answer: isolation and masquerade go in beside the veth.
    const policyDone = this.policy.add({ address: rec.address, namespace: rec.namespace, masq: rec.masq }).then(() => undefined, (err: Error) => err);
    let attached;
    try {
      attached = await attach({ netns: req.netns, ifname: req.ifname, hostIfname: rec.hostIfname, address: rec.address, gateway: this.ipam.gateway, mtu: this.mtu(conf.mtu) });
      const policyErr = await policyDone;
      if (policyErr) throw policyErr;
    } catch (err) {
      await policyDone;
      await this.undo(rec);
      if (err instanceof NetnsGone) throw new CniError(CniCode.badEnv, err.message);
      throw new CniError(CniCode.io, `cannot attach ${req.ifname} in ${req.netns}: ${(err as Error).message}`);
    }
    const alloc = this.allocation(rec);
    this.afterAnswer('publish', rec, () => this.pub.publish(alloc));
    this.log.info({ container: req.containerId, ifname: req.ifname, address: rec.address, namespace: rec.namespace }, 'attached');
    return this.result(conf, rec, attached.hostMac, attached.mac, req.netns);
  }

  private async undo(rec: IpamRecord): Promise<void> {
    await detach(rec.hostIfname).catch(() => undefined);
    await this.policy.remove({ address: rec.address, namespace: rec.namespace, masq: rec.masq }).catch(() => undefined);
    this.ipam.release(rec.containerId, rec.ifname);
  }

  /** A registry change, after every one queued before it (an address can change hands at once). */
  private inOrder(fn: () => Promise<void>): Promise<void> {
    const p = this.registryTail.then(fn);
    this.registryTail = p.catch(() => undefined);
    return p;
  }

  /** Registry work an answer does not wait for; when it fails, a repair follows until the registry takes it. */
  private afterAnswer(what: string, rec: IpamRecord, fn: () => Promise<void>): void {
    this.inOrder(fn).catch((err: Error) => {
      this.log.error({ err: err.message, address: rec.address, container: rec.containerId }, `${what} after the answer failed; repairing the registry's records once it answers`);
      this.repairSoon();
    });
  }

  /**
   * One repair at a time, retried with backoff: without it a registry outage left records of
   * deleted containers (and none of new ones) until the agent restarted.
   */
  private repairSoon(): void {
    if (this.repairTimer || this.closed) return;
    this.repairTimer = setTimeout(() => {
      this.repairTimer = undefined;
      this.inOrder(() => this.pub.repair()).then(() => {
        this.repairDelayMs = REPAIR_FIRST_MS;
        this.log.info('registry allocation records repaired');
      }, (err: Error) => {
        this.repairDelayMs = Math.min(this.repairDelayMs * 2, REPAIR_MAX_MS);
        this.log.warn({ err: err.message, retryMs: this.repairDelayMs }, 'repairing the registry allocation records failed; retrying');
        this.repairSoon();
      });
    }, this.repairDelayMs);
    this.repairTimer.unref();
  }

  /** Waits for the registry records of answered ADDs and DELs. */
  async recorded(): Promise<void> {
    await this.registryTail;
  }

  /** Waits for everything answered ADDs and DELs left running (registry records, nft changes). */
  async settled(): Promise<void> {
    await this.registryTail;
    await this.policy.settled();
  }

  /** Idempotent: an unknown attachment or a vanished netns is success. */
  async del(containerId: string, ifname: string): Promise<IpamRecord | undefined> {
    if (!containerId) throw new CniError(CniCode.badEnv, 'CNI_CONTAINERID is not set');
    if (!ifname) throw new CniError(CniCode.badEnv, 'CNI_IFNAME is not set');
    const rec = this.ipam.get(containerId, ifname);
    const hostIfname = rec?.hostIfname ?? hostIfnameFor(containerId, ifname);
    // The nft elements go while the kernel deletes the veth, once the pair carries nothing:
    // isolation never lapses for a container that can still send.
    await detach(hostIfname, rec ? () => this.policy.remove({ address: rec.address, namespace: rec.namespace, masq: rec.masq }) : undefined);
    if (!rec) return undefined;
    this.ipam.release(containerId, ifname);
    this.afterAnswer('unpublish', rec, () => this.pub.unpublish(rec.address));
    this.log.info({ container: containerId, ifname, address: rec.address }, 'detached');
    return rec;
  }

  private async check(req: CniRequest, conf: NetConf): Promise<void> {
    if (!req.containerId || !req.netns || !req.ifname) throw new CniError(CniCode.badEnv, 'CHECK needs CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME');
    const rec = this.ipam.get(req.containerId, req.ifname);
    if (!rec) throw new CniError(CniCode.unknownContainer, `no Corral attachment for container ${req.containerId} interface ${req.ifname}: ADD it first`);
    const problems = await inspect({ netns: req.netns, ifname: req.ifname, hostIfname: rec.hostIfname, address: rec.address, gateway: this.ipam.gateway, mtu: this.mtu(conf.mtu) });
    const prev = conf.prevResult?.ips?.map((i) => i.address.split('/')[0]);
    if (prev && prev.length && !prev.includes(rec.address)) problems.push(`prevResult does not hold ${rec.address}`);
    if (problems.length) throw new CniError(CniCode.broken, `attachment of ${req.containerId}/${req.ifname} is broken: ${problems.join('; ')}; DEL and ADD it again`);
  }

  /** Frees every attachment of this network that is not in the valid list. */
  private async gc(conf: NetConf): Promise<void> {
    if (!conf.validAttachments) throw new CniError(CniCode.badConfig, 'GC needs "cni.dev/valid-attachments" in the config');
    const valid = new Set(conf.validAttachments.map((a) => attachmentKey(a.containerID, a.ifname)));
    for (const rec of this.ipam.list()) {
      if (rec.network !== conf.name || valid.has(attachmentKey(rec.containerId, rec.ifname))) continue;
      await this.serial({ containerId: rec.containerId, ifname: rec.ifname } as CniRequest, () => this.del(rec.containerId, rec.ifname));
    }
  }

  /** `corral ipam gc`: frees CNI attachments whose network namespace no longer exists. */
  async gcDead(): Promise<IpamRecord[]> {
    const freed: IpamRecord[] = [];
    for (const rec of this.ipam.list()) {
      if (!rec.netns || rec.network.startsWith('docker:') || existsSync(rec.netns)) continue;
      const r = await this.serial({ containerId: rec.containerId, ifname: rec.ifname } as CniRequest, () => this.del(rec.containerId, rec.ifname));
      if (r) freed.push(r);
    }
    return freed;
  }

  /** Docker endpoints: the same namespace marking, ipMasq and Allocation record as a CNI attachment. */
  async enforce(rec: IpamRecord): Promise<void> {
    await this.ensureDataplane();
    await this.policy.add({ address: rec.address, namespace: rec.namespace, masq: rec.masq });
    await this.inOrder(() => this.pub.publish(this.allocation(rec)));
  }

  async unenforce(rec: IpamRecord): Promise<void> {
    await this.policy.remove({ address: rec.address, namespace: rec.namespace, masq: rec.masq }).catch(() => undefined);
    await this.inOrder(() => this.pub.unpublish(rec.address)).catch(() => undefined);
  }

  allocation(rec: IpamRecord): Allocation {
    return { address: rec.address, namespace: rec.namespace, containerId: rec.containerId, ifname: rec.ifname, node: this.o.node, sinceMs: rec.sinceMs, name: rec.name };
  }

  private result(conf: NetConf, rec: IpamRecord, hostMac: string, mac: string, netns: string): CniResult {
    const prev = conf.prevResult ?? { cniVersion: conf.cniVersion };
    const interfaces = [...(prev.interfaces ?? [])];
    const base = interfaces.length;
    // CNI 1.1 results carry the MTU of each interface.
    const mtu = conf.cniVersion === '1.1.0' ? { mtu: this.mtu(conf.mtu) } : {};
    interfaces.push({ name: rec.hostIfname, mac: hostMac, ...mtu }, { name: rec.ifname, mac, sandbox: netns, ...mtu });
    const ip = { address: `${rec.address}/32`, gateway: this.ipam.gateway, interface: base + 1, ...(conf.cniVersion === '0.4.0' ? { version: '4' } : {}) };
    return {
      cniVersion: conf.cniVersion,
      interfaces,
      ips: [...(prev.ips ?? []), ip],
      routes: [...(prev.routes ?? []), { dst: '0.0.0.0/0', gw: this.ipam.gateway }],
      dns: { nameservers: [this.ipam.gateway], search: [`${rec.namespace}.${this.o.dnsDomain}`, this.o.dnsDomain], options: ['ndots:2'] },
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.repairTimer);
    await this.settled();
    this.ipam.close();
  }
}
