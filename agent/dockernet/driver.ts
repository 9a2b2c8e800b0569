// Docker's remote network driver and IPAM driver, backed by the same IPAM, veth wiring, nftables
// policy and Allocation records as the CNI plugin. Docker asks the IPAM for an address before
// the endpoint that will hold it has an id: the address is held under a pending key, then moved
// to the endpoint id (one journal line) at CreateEndpoint. Docker moves the container end of the
// veth into the sandbox itself (Join returns its name) and sets the /32, the link route to the
// gateway and the default route we return.
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../../api/log.js';
import { detach, hostIfnameFor, vethPair } from '../attach/veth.js';
import type { Attachments } from '../attachments.js';
import { IpamExhausted, PENDING_NETWORK, type IpamRecord } from '../ipam.js';
import { DEFAULT_NAMESPACE } from '../../api/types.js';

/** The ifname of Docker endpoints in IPAM keys (endpoint id, "docker"). */
export const DOCKER_IFNAME = 'docker';
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** A plugin call that fails: Docker shows `msg` to the user. */
export class DriverError extends Error {}

export interface DockerNetwork {
  id: string;
  namespace: string;
  masq: boolean;
  /** Set only when the network was created with an MTU option; else the overlay's MTU applies. */
  mtu?: number;
}

type Body = Record<string, any>;

export class DockerNetworkDriver {
  private readonly networks = new Map<string, DockerNetwork>();
  private readonly file: string;

  constructor(private readonly att: Attachments, stateDir: string, private readonly log: Logger, private readonly pluginName = 'corral') {
    const dir = join(stateDir, 'dockernet');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.file = join(dir, 'networks.json');
    try {
      for (const n of JSON.parse(readFileSync(this.file, 'utf8')) as DockerNetwork[]) this.networks.set(n.id, n);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read ${this.file}: ${(err as Error).message}`);
    }
  }

  private get ipam() {
    return this.att.ipam;
  }

  /** Docker keeps its networks across plugin restarts and never creates them again: keep ours too. */
  private save(): void {
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, JSON.stringify([...this.networks.values()]), { mode: 0o600 });
    renameSync(tmp, this.file);
  }

  /** One plugin call: `/<Interface>.<Method>` with its JSON body; returns the JSON reply. */
  async call(path: string, body: Body): Promise<Body> {
    switch (path) {
      case '/Plugin.Activate': return { Implements: ['NetworkDriver', 'IpamDriver'] };
      case '/NetworkDriver.GetCapabilities': return { Scope: 'local', ConnectivityScope: 'local' };
      case '/NetworkDriver.CreateNetwork': return this.createNetwork(body);
      case '/NetworkDriver.DeleteNetwork': return this.deleteNetwork(body);
      case '/NetworkDriver.CreateEndpoint': return this.createEndpoint(body);
      case '/NetworkDriver.DeleteEndpoint': return this.deleteEndpoint(body);
      case '/NetworkDriver.Join': return this.join(body);
      case '/NetworkDriver.Leave': return {};
      case '/NetworkDriver.EndpointOperInfo': return { Value: this.operInfo(body) };
      case '/NetworkDriver.DiscoverNew':
      case '/NetworkDriver.DiscoverDelete':
      case '/NetworkDriver.ProgramExternalConnectivity':
      case '/NetworkDriver.RevokeExternalConnectivity':
        return {};
      case '/IpamDriver.GetCapabilities': return { RequiresMACAddress: false, RequiresRequestReplay: false };
      case '/IpamDriver.GetDefaultAddressSpaces': return { LocalDefaultAddressSpace: 'corral', GlobalDefaultAddressSpace: 'corral-global' };
      case '/IpamDriver.RequestPool': return this.requestPool(body);
      case '/IpamDriver.ReleasePool': return {};
      case '/IpamDriver.RequestAddress': return this.requestAddress(body);
      case '/IpamDriver.ReleaseAddress': return this.releaseAddress(body);
      default: throw new DriverError(`corral: ${path} is not part of the network or IPAM driver API`);
    }
  }

  // ---- IPAM ----

  private requestPool(b: Body): Body {
    if (b.V6) throw new DriverError('corral IPAM is IPv4 only: create the network without --ipv6');
    const block = this.ipam.blockCidr;
    if (b.Pool && b.Pool !== block) throw new DriverError(`corral IPAM gives this host's block ${block}; drop --subnet ${b.Pool} (or pass --subnet ${block})`);
    // Docker checks a pool it did not ask for against the host's routes and asks again while they
    // overlap (forever: moby#42216); the cluster CIDR is routed to the overlay, so the block always
    // overlaps. Docker skips the check for 0.0.0.0/0; addresses come from RequestAddress anyway.
    return { PoolID: block, Pool: b.Pool ? block : '0.0.0.0/0', Data: {} };
  }

  private requestAddress(b: Body): Body {
    const prefix = this.ipam.blockCidr.split('/')[1];
    const opts = (b.Options ?? {}) as Record<string, string>;
    if (opts.RequestAddressType === 'com.docker.network.gateway') {
      if (b.Address && b.Address !== this.ipam.gateway) throw new DriverError(`the gateway of a Corral network is this host's gateway ${this.ipam.gateway}; drop --gateway ${b.Address}`);
      return { Address: `${this.ipam.gateway}/${prefix}`, Data: {} };
    }
    if (b.Address) throw new DriverError(`corral IPAM chooses container addresses; drop --ip ${b.Address}`);
    let rec: IpamRecord;
    try {
      rec = this.ipam.allocate({ containerId: `pending-${randomUUID()}`, ifname: DOCKER_IFNAME, namespace: DEFAULT_NAMESPACE, network: PENDING_NETWORK, netns: '', name: '', hostIfname: '', masq: false });
    } catch (err) {
      if (err instanceof IpamExhausted) throw new DriverError(err.message);
      throw err;
    }
    // A /32, as for CNI: no shared L2 between containers; Join adds the link route to the gateway.
    return { Address: `${rec.address}/32`, Data: {} };
  }

  private releaseAddress(b: Body): Body {
    const address = String(b.Address ?? '').split('/')[0]!;
    const rec = this.ipam.byAddr(address);
    if (rec && rec.network.startsWith('docker:')) {
      this.ipam.release(rec.containerId, rec.ifname);
      this.log.info({ endpoint: rec.containerId, address }, 'docker address released');
    }
    return {};
  }

  // ---- network driver ----

  private createNetwork(b: Body): Body {
    const id = String(b.NetworkID ?? '');
    if (!id) throw new DriverError('CreateNetwork without a NetworkID');
    const v4 = (b.IPv4Data ?? []) as Array<{ Pool?: string; Gateway?: string }>;
    const ours = (d: { Pool?: string; Gateway?: string }) => d.Pool === this.ipam.blockCidr || (d.Pool === '0.0.0.0/0' && d.Gateway === `${this.ipam.gateway}/${this.ipam.blockCidr.split('/')[1]}`);
    if (!v4.length || !v4.every(ours)) {
      throw new DriverError(`a Corral network takes its addresses from Corral's IPAM: add --ipam-driver ${this.pluginName} (the same plugin name as -d)`);
    }
    if ((b.IPv6Data ?? []).length) throw new DriverError('Corral networks are IPv4 only: create the network without --ipv6');
    const generic = (b.Options?.['com.docker.network.generic'] ?? {}) as Record<string, string>;
    const namespace = generic['corral.namespace'] ?? DEFAULT_NAMESPACE;
    if (!LABEL.test(namespace)) throw new DriverError(`--opt corral.namespace="${namespace}" is not a DNS label (a-z, 0-9, "-", 1-63 characters)`);
    const masqText = generic['corral.ipmasq'] ?? 'true';
    if (masqText !== 'true' && masqText !== 'false') throw new DriverError(`--opt corral.ipmasq="${masqText}" must be true or false`);
    const mtuText = generic['com.docker.network.driver.mtu'] ?? generic['corral.mtu'];
    const mtu = mtuText === undefined ? undefined : Number(mtuText);
    if (mtu !== undefined && (!Number.isInteger(mtu) || mtu < 576 || mtu > 9000)) throw new DriverError(`--opt corral.mtu="${mtuText}" is not a whole number from 576 to 9000`);
    this.networks.set(id, { id, namespace, masq: masqText === 'true', mtu });
    this.save();
    this.log.info({ network: id, namespace }, 'docker network created');
    return {};
  }

  private deleteNetwork(b: Body): Body {
    if (this.networks.delete(String(b.NetworkID ?? ''))) this.save();
    return {};
  }

  private network(id: unknown): DockerNetwork {
    const n = this.networks.get(String(id ?? ''));
    if (!n) throw new DriverError(`network ${String(id)} is not a Corral network this agent knows (was it created with another agent's state dir?): remove and create it again`);
    return n;
  }

  private async createEndpoint(b: Body): Promise<Body> {
    const net = this.network(b.NetworkID);
    const eid = String(b.EndpointID ?? '');
    const address = String(b.Interface?.Address ?? '').split('/')[0]!;
    if (!eid || !address) throw new DriverError(`CreateEndpoint needs an EndpointID and an address from the Corral IPAM (create the network with --ipam-driver ${this.pluginName})`);
    let rec = this.ipam.get(eid, DOCKER_IFNAME);
    if (!rec) {
      const held = this.ipam.byAddr(address);
      if (!held || held.network !== PENDING_NETWORK) throw new DriverError(`address ${address} was not handed out by the Corral IPAM: create the network with --ipam-driver ${this.pluginName}`);
      rec = this.ipam.rekey(held.containerId, held.ifname, {
        containerId: eid, ifname: DOCKER_IFNAME, network: `docker:${net.id}`, namespace: net.namespace, masq: net.masq, hostIfname: hostIfnameFor(eid, DOCKER_IFNAME),
      });
    }
    try {
      await this.att.enforce(rec);
    } catch (err) {
      await this.att.unenforce(rec);
      throw new DriverError(`corral: cannot program endpoint ${eid.slice(0, 12)} (${address}): ${(err as Error).message}`);
    }
    this.log.info({ endpoint: eid, address, namespace: net.namespace }, 'docker endpoint created');
    return {};
  }

  private async deleteEndpoint(b: Body): Promise<Body> {
    const eid = String(b.EndpointID ?? '');
    const rec = this.ipam.get(eid, DOCKER_IFNAME);
    await detach(hostIfnameFor(eid, DOCKER_IFNAME));
    // The address itself is freed by ReleaseAddress, which Docker sends next.
    if (rec) await this.att.unenforce(rec);
    return {};
  }

  private async join(b: Body): Promise<Body> {
    const net = this.network(b.NetworkID);
    const eid = String(b.EndpointID ?? '');
    const rec = this.ipam.get(eid, DOCKER_IFNAME);
    if (!rec) throw new DriverError(`endpoint ${eid.slice(0, 12)} has no Corral address: remove the container and run it again`);
    const peer = 'cn' + rec.hostIfname.slice(2);
    try {
      await this.att.ensureDataplane();
      await vethPair({ hostIfname: rec.hostIfname, peerIfname: peer, address: rec.address, gateway: this.ipam.gateway, mtu: this.att.mtu(net.mtu) });
    } catch (err) {
      throw new DriverError(`corral: cannot make the veth pair for ${rec.address}: ${(err as Error).message}`);
    }
    return {
      InterfaceName: { SrcName: peer, DstPrefix: 'eth' },
      Gateway: this.ipam.gateway,
      StaticRoutes: [{ Destination: `${this.ipam.gateway}/32`, RouteType: 1 }],
      DisableGatewayService: true,
    };
  }

  private operInfo(b: Body): Record<string, string> {
    const rec = this.ipam.get(String(b.EndpointID ?? ''), DOCKER_IFNAME);
    return rec ? { 'corral.address': rec.address, 'corral.namespace': rec.namespace, 'corral.host-interface': rec.hostIfname } : {};
  }

  /** `corral ipam gc`: frees Docker addresses whose endpoint Docker no longer has (`live` = endpoint ids Docker reports). */
  async gc(live: Set<string>, graceMs = 60_000): Promise<IpamRecord[]> {
    const freed: IpamRecord[] = [];
    for (const rec of this.ipam.list()) {
      if (!rec.network.startsWith('docker:') || live.has(rec.containerId)) continue;
      // A pending address belongs to an endpoint Docker is creating right now.
      if (rec.network === PENDING_NETWORK && Date.now() - rec.sinceMs < graceMs) continue;
      await detach(rec.hostIfname || hostIfnameFor(rec.containerId, DOCKER_IFNAME));
      await this.att.unenforce(rec);
      this.ipam.release(rec.containerId, rec.ifname);
      freed.push(rec);
    }
    return freed;
  }
}
