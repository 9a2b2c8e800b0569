// A small CRI v1 client over @grpc/grpc-js, driving containerd the way kubelet does: a pod sandbox
// from a pod's metadata, namespace options and DNS config, then containers in it. The proto is
// the public cri-api's (api.proto, vendored with its LICENSE; README.md says which version).
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { BUSYBOX_IMAGE } from './containerd.js';

const PROTO = fileURLToPath(new URL('./api.proto', import.meta.url));

let ctor: grpc.ServiceClientConstructor | undefined;
function runtimeCtor(): grpc.ServiceClientConstructor {
  if (!ctor) {
    const def = protoLoader.loadSync(PROTO, { keepCase: true, longs: String, enums: String, defaults: true, arrays: true, objects: false });
    ctor = (grpc.loadPackageDefinition(def) as any).runtime.v1.RuntimeService as grpc.ServiceClientConstructor;
  }
  return ctor;
}

/** A gRPC error from the runtime: status code and containerd's message. */
export class CriError extends Error {
  constructor(readonly method: string, readonly code: number, readonly details: string) {
    super(`CRI ${method} failed (${grpc.status[code] ?? code}): ${details}`);
  }
}

export interface PodSpec {
  name: string;
  namespace: string;
  uid?: string;
  dns?: { servers: string[]; searches?: string[]; options?: string[] };
  labels?: Record<string, string>;
}

export interface Pod { id: string; spec: PodSpec; config: Record<string, unknown> }

export class CriClient {
  private readonly c: grpc.Client & Record<string, Function>;

  constructor(readonly socket: string) {
    const C = runtimeCtor();
    this.c = new C(`unix://${socket}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 16 << 20 }) as any;
  }

  call<T = any>(method: string, req: object, timeoutMs = 120_000): Promise<T> {
    return new Promise((resolve, reject) => {
      this.c[method]!.call(this.c, req, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: T) => {
        if (err) reject(new CriError(method, err.code, err.details || err.message));
        else resolve(res);
      });
    });
  }

  version(): Promise<{ runtime_name: string; runtime_version: string; runtime_api_version: string }> {
    return this.call('Version', { version: 'v1' });
  }

  /** The runtime's conditions (RuntimeReady, NetworkReady), which kubelet polls before it starts pods; throws while CRI is not initialized. */
  async ready(): Promise<boolean> {
    const r = await this.call<any>('Status', { verbose: false }, 10_000);
    const conds = (r.status?.conditions ?? []) as Array<{ type: string; status: boolean }>;
    return ['RuntimeReady', 'NetworkReady'].every((t) => conds.some((c) => c.type === t && c.status));
  }

  /** What kubelet sends for a pod on the pod network: metadata, hostname, log dir, DNS, namespaces. */
  static podConfig(spec: PodSpec, logDir: string): Record<string, unknown> {
    const uid = spec.uid ?? randomUUID();
    return {
      metadata: { name: spec.name, uid, namespace: spec.namespace, attempt: 0 },
      hostname: spec.name,
      log_directory: `${logDir}/${spec.namespace}_${spec.name}_${uid}`,
      dns_config: spec.dns ? { servers: spec.dns.servers, searches: spec.dns.searches ?? [], options: spec.dns.options ?? [] } : undefined,
      port_mappings: [],
      labels: { 'io.kubernetes.pod.name': spec.name, 'io.kubernetes.pod.namespace': spec.namespace, 'io.kubernetes.pod.uid': uid, ...(spec.labels ?? {}) },
      annotations: { 'kubernetes.io/config.source': 'api' },
      linux: {
        cgroup_parent: '',
        security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } },
        sysctls: {},
      },
    };
  }

  async runPod(spec: PodSpec, logDir: string, runtimeHandler = ''): Promise<Pod> {
    const config = CriClient.podConfig(spec, logDir);
    const r = await this.call<{ pod_sandbox_id: string }>('RunPodSandbox', { config, runtime_handler: runtimeHandler });
    return { id: r.pod_sandbox_id, spec, config };
  }

  /** The sandbox's state and pod IP (and, verbose, containerd's info with the netns path). */
  async podStatus(id: string, verbose = false): Promise<{ state: string; ip: string; info: Record<string, string> }> {
    const r = await this.call<any>('PodSandboxStatus', { pod_sandbox_id: id, verbose });
    return { state: r.status.state, ip: r.status.network?.ip ?? '', info: r.info ?? {} };
  }

  async listPods(): Promise<Array<{ id: string; state: string; name: string; namespace: string }>> {
    const r = await this.call<any>('ListPodSandbox', {});
    return r.items.map((p: any) => ({ id: p.id, state: p.state, name: p.metadata?.name ?? '', namespace: p.metadata?.namespace ?? '' }));
  }

  stopPod(id: string): Promise<unknown> {
    return this.call('StopPodSandbox', { pod_sandbox_id: id });
  }

  removePod(id: string): Promise<unknown> {
    return this.call('RemovePodSandbox', { pod_sandbox_id: id });
  }

  /** Create + start a busybox container in the pod, as kubelet would for one container of the spec. */
  async startContainer(pod: Pod, name: string, command: string[]): Promise<string> {
    const r = await this.call<{ container_id: string }>('CreateContainer', {
      pod_sandbox_id: pod.id,
      config: {
        metadata: { name, attempt: 0 },
        image: { image: BUSYBOX_IMAGE },
        command,
        args: [],
        working_dir: '/',
        envs: [{ key: 'PATH', value: '/bin' }],
        labels: { 'io.kubernetes.container.name': name },
        annotations: {},
        log_path: `${name}/0.log`,
        linux: { resources: {}, security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
      },
      sandbox_config: pod.config,
    });
    await this.call('StartContainer', { container_id: r.container_id });
    return r.container_id;
  }

  /** Runs a command in a container; resolves with its output and exit code (never throws on a non-zero exit). */
  async exec(containerId: string, cmd: string[], timeoutS = 10): Promise<{ code: number; stdout: string; stderr: string }> {
    const r = await this.call<any>('ExecSync', { container_id: containerId, cmd, timeout: String(timeoutS) }, (timeoutS + 20) * 1000);
    return { code: r.exit_code, stdout: Buffer.from(r.stdout).toString(), stderr: Buffer.from(r.stderr).toString() };
  }

  /** Stops and removes every sandbox (what a drained node does), ignoring the ones already gone. */
  async removeAll(): Promise<void> {
    for (const p of await this.listPods().catch(() => [])) {
      await this.stopPod(p.id).catch(() => undefined);
      await this.removePod(p.id).catch(() => undefined);
    }
  }

  close(): void {
    this.c.close();
  }
}
