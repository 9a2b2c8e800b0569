// The CNI contract shared by the corral-cni plugin and the agent: supported versions, error
// codes, the network config and its validation, the result shape. Kept free of heavy imports:
// the plugin starts for every container.
import { DEFAULT_NAMESPACE } from './types.js';

export const CNI_VERSIONS = ['0.4.0', '1.0.0', '1.1.0'];
export const DEFAULT_MTU = 1420;      // WireGuard overlay on a 1500-byte underlay

/** CNI error codes (spec section "Error codes"), plus ours from 100. */
export const CniCode = {
  incompatibleVersion: 1, unsupportedField: 2, unknownContainer: 3, badEnv: 4, io: 5, decode: 6, badConfig: 7,
  tryAgain: 11, notAvailable: 50, exhausted: 100, broken: 101, duplicate: 102,
} as const;

export class CniError extends Error {
  constructor(readonly code: number, msg: string, readonly details = '') {
    super(msg);
  }
}

export interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  namespace: string;
  /** Kubernetes: a pod's namespace (K8S_POD_NAMESPACE in CNI_ARGS, set by containerd and CRI-O) is its Corral namespace; `namespace` for the rest. */
  namespaceFromPod: boolean;
  /** Absent: the host's overlay MTU (underlay minus WireGuard overhead), DEFAULT_MTU without an overlay. */
  mtu?: number;
  ipMasq: boolean;
  agentSocket: string;
  prevResult?: CniResult;
  validAttachments?: Array<{ containerID: string; ifname: string }>;
}

export interface CniResult {
  cniVersion: string;
  interfaces?: Array<{ name: string; mac?: string; sandbox?: string; mtu?: number }>;
  ips?: Array<{ address: string; gateway?: string; interface?: number; version?: string }>;
  routes?: Array<{ dst: string; gw?: string }>;
  dns?: { nameservers?: string[]; domain?: string; search?: string[]; options?: string[] };
}

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Parses and validates the network config; throws CniError 6/7/1 with what to fix. */
export function parseNetConf(raw: Buffer | string): NetConf {
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(String(raw)) as Record<string, unknown>;
  } catch (err) {
    throw new CniError(CniCode.decode, `network config on stdin is not JSON: ${(err as Error).message}`);
  }
  if (!j || typeof j !== 'object' || Array.isArray(j)) throw new CniError(CniCode.decode, 'network config on stdin must be a JSON object');
  const v = j.cniVersion;
  if (typeof v !== 'string' || !v) throw new CniError(CniCode.badConfig, 'network config lacks "cniVersion": set it to "1.1.0" (or "1.0.0", "0.4.0")');
  if (!CNI_VERSIONS.includes(v)) throw new CniError(CniCode.incompatibleVersion, `cniVersion "${v}" is not supported: use one of ${CNI_VERSIONS.join(', ')}`);
  if (typeof j.name !== 'string' || !j.name) throw new CniError(CniCode.badConfig, 'network config lacks "name": give the network a name');
  if (j.type !== 'corral') throw new CniError(CniCode.badConfig, `"type" is ${JSON.stringify(j.type)}, this plugin is "corral"`);
  const namespace = j.namespace === undefined ? DEFAULT_NAMESPACE : j.namespace;
  if (typeof namespace !== 'string' || !LABEL.test(namespace)) throw new CniError(CniCode.badConfig, `"namespace" ${JSON.stringify(j.namespace)} is not a DNS label (a-z, 0-9, "-", 1-63 characters)`);
  const namespaceFromPod = j.namespaceFromPod === undefined ? false : j.namespaceFromPod;
  if (typeof namespaceFromPod !== 'boolean') throw new CniError(CniCode.badConfig, `"namespaceFromPod" ${JSON.stringify(j.namespaceFromPod)} must be true or false`);
  const mtu = j.mtu as number | undefined;
  if (mtu !== undefined && (typeof mtu !== 'number' || !Number.isInteger(mtu) || mtu < 576 || mtu > 9000)) throw new CniError(CniCode.badConfig, `"mtu" ${JSON.stringify(j.mtu)} is not a whole number from 576 to 9000`);
  const ipMasq = j.ipMasq === undefined ? true : j.ipMasq;
  if (typeof ipMasq !== 'boolean') throw new CniError(CniCode.badConfig, `"ipMasq" ${JSON.stringify(j.ipMasq)} must be true or false`);
  const agentSocket = j.agentSocket === undefined ? '/run/corral/agent.sock' : j.agentSocket;
  if (typeof agentSocket !== 'string' || !agentSocket.startsWith('/')) throw new CniError(CniCode.badConfig, `"agentSocket" ${JSON.stringify(j.agentSocket)} must be an absolute path such as /run/corral/agent.sock`);
  const valid = (j['cni.dev/valid-attachments'] ?? j['cni.dev/attachments']) as NetConf['validAttachments'];
  if (valid !== undefined && !Array.isArray(valid)) throw new CniError(CniCode.badConfig, '"cni.dev/valid-attachments" must be a list of {"containerID", "ifname"}');
  return { cniVersion: v, name: j.name, type: 'corral', namespace, namespaceFromPod, mtu, ipMasq, agentSocket, prevResult: j.prevResult as CniResult | undefined, validAttachments: valid };
}


/** One variable of CNI_ARGS ("K1=V1;K2=V2"), or '' when absent. */
export function cniArg(args: string, key: string): string {
  for (const kv of args.split(';')) {
    const eq = kv.indexOf('=');
    if (eq > 0 && kv.slice(0, eq) === key) return kv.slice(eq + 1);
  }
  return '';
}

/**
 * The Corral namespace of an attachment: with namespaceFromPod, the pod's Kubernetes namespace
 * (Kubernetes namespaces are DNS labels too); else, or without one, the config's `namespace`.
 */
export function attachmentNamespace(conf: NetConf, args: string): string {
  if (!conf.namespaceFromPod) return conf.namespace;
  const ns = cniArg(args, 'K8S_POD_NAMESPACE');
  if (!ns) return conf.namespace;
  if (!LABEL.test(ns)) throw new CniError(CniCode.badConfig, `K8S_POD_NAMESPACE "${ns}" in CNI_ARGS is not a DNS label (a-z, 0-9, "-", 1-63 characters), so it cannot be the pod's Corral namespace`);
  return ns;
}
