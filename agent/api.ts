// The agent's gRPC API on its unix socket (mode 0600): watch, list, status, register,
// deregister, switch, weight, rollback. Errors cross as gRPC status codes with one readable line.
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { agentServiceDefinition, CHANNEL_OPTIONS, encodeWatchEvent, grpc } from '../api/grpc.js';
import type { Logger } from '../api/log.js';
import type {
  AckRequest, DeregisterRequest, ListReply, ListRequest, RegisterRequest, RollbackRequest,
  StatusReply, SwitchRequest, UpgradeEvent, UpgradeRequest, HostsReply, HostsRequest, CniReply, RotateKeysReply, CniRequest, IpamGcReply, WatchEvent, WatchRequest, WeightRequest, EndpointReply, ServiceReply,
} from '../api/types.js';
import { ColorError } from './colors.js';
import { PermissionDenied } from './registry/registry.js';
import { InvalidEndpoint } from './endpoints.js';

export class NotFound extends Error {}

/** What the API needs from the agent. */
export interface AgentOps {
  /** Sends the first events of a watch, then every later one; returns the unsubscribe. */
  watch(req: WatchRequest, send: (ev: WatchEvent) => void): () => void;
  hosts(req: HostsRequest): Promise<HostsReply>;
  list(req: ListRequest): Promise<ListReply>;
  status(): StatusReply;
  ack(component: string, revision: number): void;
  watching(component: string, delta: 1 | -1, kinds?: string[]): void;
  register(req: RegisterRequest): Promise<EndpointReply>;
  deregister(req: DeregisterRequest): Promise<EndpointReply>;
  switchColor(req: SwitchRequest): Promise<ServiceReply>;
  weight(req: WeightRequest): Promise<ServiceReply>;
  rollback(req: RollbackRequest): Promise<ServiceReply>;
  cni(req: CniRequest): Promise<CniReply>;
  ipamGc(): Promise<IpamGcReply>;
  rotateKeys(): Promise<RotateKeysReply>;
  /** `corral upgrade`: progress events until it ends (or is under way, detached); resolves with the unsubscribe. */
  upgrade(req: UpgradeRequest, send: (ev: UpgradeEvent) => void, end: () => void): Promise<() => void>;
}

function statusOf(err: unknown): grpc.StatusObject {
  const msg = err instanceof Error ? err.message : String(err);
  let code = grpc.status.INTERNAL;
  if (err instanceof InvalidEndpoint) code = grpc.status.INVALID_ARGUMENT;
  else if (err instanceof NotFound) code = grpc.status.NOT_FOUND;
  else if (err instanceof ColorError) code = grpc.status.FAILED_PRECONDITION;
  else if (err instanceof PermissionDenied) code = grpc.status.PERMISSION_DENIED;
  return { code, details: msg, metadata: new grpc.Metadata() };
}

function unaryHandler<Req, Rep>(log: Logger, name: string, fn: (req: Req) => Rep | Promise<Rep>): grpc.handleUnaryCall<Req, Rep> {
  return (call, cb) => {
    Promise.resolve()
      .then(() => fn(call.request))
      .then(
        (rep) => cb(null, rep),
        (err: unknown) => {
          const st = statusOf(err);
          if (st.code === grpc.status.INTERNAL) log.error({ err, method: name }, 'agent API call failed');
          cb(st);
        },
      );
  };
}

export async function serveApi(socketPath: string, ops: AgentOps, log: Logger): Promise<grpc.Server> {
  const server = new grpc.Server(CHANNEL_OPTIONS);
  server.addService(agentServiceDefinition(), {
    Watch: (call: grpc.ServerWritableStream<WatchRequest, WatchEvent>) => {
      const component = call.request.component || 'unknown';
      ops.watching(component, 1, call.request.kinds);
      const unsubscribe = ops.watch(call.request, (ev) => call.write(encodeWatchEvent(ev) as unknown as WatchEvent));
      const done = () => {
        unsubscribe();
        ops.watching(component, -1);
      };
      call.once('cancelled', done);
      call.once('close', done);
    },
    Ack: unaryHandler<AckRequest, object>(log, 'Ack', (req) => {
      ops.ack(req.component, req.revision);
      return {};
    }),
    List: unaryHandler(log, 'List', (req: ListRequest) => ops.list(req)),
    Status: unaryHandler(log, 'Status', () => ops.status()),
    Register: unaryHandler(log, 'Register', (req: RegisterRequest) => ops.register(req)),
    Deregister: unaryHandler(log, 'Deregister', (req: DeregisterRequest) => ops.deregister(req)),
    Switch: unaryHandler(log, 'Switch', (req: SwitchRequest) => ops.switchColor(req)),
    Weight: unaryHandler(log, 'Weight', (req: WeightRequest) => ops.weight(req)),
    Rollback: unaryHandler(log, 'Rollback', (req: RollbackRequest) => ops.rollback(req)),
    Cni: unaryHandler(log, 'Cni', (req: CniRequest) => ops.cni(req)),
    IpamGc: unaryHandler(log, 'IpamGc', () => ops.ipamGc()),
    RotateKeys: unaryHandler(log, 'RotateKeys', () => ops.rotateKeys()),
    Hosts: unaryHandler(log, 'Hosts', (req: HostsRequest) => ops.hosts(req)),
    Upgrade: (call: grpc.ServerWritableStream<UpgradeRequest, UpgradeEvent>) => {
      let unsubscribe = () => {};
      let ended = false;
      const end = () => {
        if (ended) return;
        ended = true;
        call.end();
      };
      ops.upgrade(call.request, (ev) => void (ended || call.write(ev)), end).then(
        (u) => (ended ? u() : (unsubscribe = u)),
        (err: unknown) => {
          const st = statusOf(err);
          if (st.code === grpc.status.INTERNAL) log.error({ err, method: 'Upgrade' }, 'agent API call failed');
          ended = true;
          call.emit('error', st);
        },
      );
      // The client going away (Ctrl-C) leaves the upgrade running in the agent.
      call.once('cancelled', () => unsubscribe());
      call.once('close', () => unsubscribe());
    },
  });
  mkdirSync(dirname(socketPath), { recursive: true, mode: 0o755 });
  rmSync(socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
  });
  chmodSync(socketPath, 0o600);
  return server;
}
