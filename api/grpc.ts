// Loads api/corral.proto once and builds the agent's gRPC client and service definition.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

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
    cached = grpc.loadPackageDefinition(def);
  }
  return cached;
}

type ServiceCtor = grpc.ServiceClientConstructor;

function agentCtor(): ServiceCtor {
  const pkg = loadPackage() as unknown as { corral: { v1: { Agent: ServiceCtor } } };
  return pkg.corral.v1.Agent;
}

export function agentServiceDefinition(): grpc.ServiceDefinition {
  return agentCtor().service;
}

/** A raw gRPC client of the agent over its unix socket. */
export function agentClient(socketPath: string): grpc.Client & Record<string, Function> {
  const Ctor = agentCtor();
  return new Ctor(`unix:${socketPath}`, grpc.credentials.createInsecure(), {
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
