// Loads api/corral.proto once and builds the agent's gRPC client and service definition.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { encoderFor, type MessageDescriptor, Writer } from './wire.js';

function protoPath(): string {
  // Source tree: api/corral.proto beside this file. Bundle: dist/corral.proto, one level above
  // the chunk (dist/chunks/) this code is bundled into, or beside the entry file.
  for (const rel of ['./corral.proto', '../corral.proto', '../api/corral.proto']) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(p)) return p;
  }
  throw new Error(`corral.proto not found near ${fileURLToPath(import.meta.url)}: reinstall or rebuild (npm run build)`);
}

let cached: grpc.GrpcObject | undefined;
let definition: protoLoader.PackageDefinition | undefined;
function loadPackage(): grpc.GrpcObject {
  if (!cached) {
    const def = protoLoader.loadSync(protoPath(), {
      keepCase: false,
      longs: Number,
      defaults: true,
      arrays: true,
      objects: true,
      oneofs: true,
    });
    definition = def;
    cached = grpc.loadPackageDefinition(def);
  }
  return cached;
}

type ServiceCtor = grpc.ServiceClientConstructor;

function agentCtor(): ServiceCtor {
  const pkg = loadPackage() as unknown as { corral: { v1: { Agent: ServiceCtor } } };
  return pkg.corral.v1.Agent;
}

/**
 * The service as the agent serves it: a Watch reply may be a WatchEvent already encoded
 * (encodeWatchEvent), so one event sent to DNS, LB and the CLI is encoded once, not per stream.
 */
export function agentServiceDefinition(): grpc.ServiceDefinition {
  const service = { ...agentCtor().service };
  const watch = service.Watch!;
  const serialize = watch.responseSerialize;
  service.Watch = { ...watch, responseSerialize: (v: unknown) => (Buffer.isBuffer(v) ? v : serialize(v)) };
  return service;
}

/**
 * The last event encoded and its bytes: a broadcast hands one event to every stream in a row, so
 * one slot shares the encoding without keeping the history's events' bytes alive.
 */
let last: { ev: object; bytes: Buffer } | undefined;
let watchEncoder: ((w: Writer, v: unknown) => void) | undefined;

/**
 * A WatchEvent as Watch replies carry it (api/wire.ts, not protobufjs: see there why), encoded
 * once for the streams it goes to one after another: events are never changed after they are sent.
 */
export function encodeWatchEvent(ev: object): Buffer {
  if (last?.ev === ev) return last.bytes;
  watchEncoder ??= messageEncoder('WatchEvent');
  const w = new Writer();
  watchEncoder(w, ev);
  last = { ev, bytes: w.finish() };
  return last.bytes;
}

/** The api/wire.ts encoder of a corral.v1 message, from the loaded .proto's descriptors. */
export function messageEncoder(name: string): (w: Writer, v: unknown) => void {
  loadPackage();
  const desc = (n: string) => (definition![`corral.v1.${n}`] as { type?: MessageDescriptor } | undefined)?.type;
  const root = desc(name);
  if (!root) throw new Error(`corral.proto has no message ${name}`);
  return encoderFor(root, (typeName, scope) => {
    const short = typeName.replace(/^\.?corral\.v1\./, '');
    const found = scope.nestedType.find((t) => t.name === short) ?? desc(short);
    if (!found) throw new Error(`corral.proto: no message ${typeName} (in ${scope.name})`);
    return found;
  });
}

/** No channelz on the agent's socket: its per-call bookkeeping costs every watch message and ack, and nobody reads it. */
export const CHANNEL_OPTIONS = { 'grpc.enable_channelz': 0 } as const;

/** A raw gRPC client of the agent over its unix socket. */
export function agentClient(socketPath: string): grpc.Client & Record<string, Function> {
  const Ctor = agentCtor();
  return new Ctor(`unix:${socketPath}`, grpc.credentials.createInsecure(), {
    ...CHANNEL_OPTIONS,
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
    // A local socket: trying it again is cheap, and DNS and LB must find a restarted agent within
    // a second, not after grpc's default backoff (1 s growing to 120 s while the agent is down).
    'grpc.initial_reconnect_backoff_ms': 100,
    'grpc.max_reconnect_backoff_ms': 1000,
  }) as grpc.Client & Record<string, Function>;
}

/** Calls a unary method and resolves with its reply. */
export function unary<Req, Rep>(client: grpc.Client & Record<string, Function>, method: string, req: Req, timeoutMs = 10_000): Promise<Rep> {
  return new Promise((resolve, reject) => {
    client[method](req, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, reply: Rep) => {
      if (err) reject(err);
      else resolve(reply);
    });
  });
}

export { grpc };
