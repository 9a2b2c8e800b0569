// deploy/kubernetes/corral.yaml, checked without a cluster (none is available here): parsed by a
// real YAML parser (PyYAML, which docker-compose brings), the agent's settings read by the agent's
// own flag parser, every mount backed by a volume, and the init container's script run for real
// against a scratch directory standing in for the host. No claim beyond that: it has not been
// applied to a Kubernetes cluster.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DAEMON_FLAGS, daemonOptions } from '../../cli/daemons.js';
import { parseFlags } from '../../cli/flags.js';
import { CORRAL } from '../support/corral.js';

const FILE = 'deploy/kubernetes/corral.yaml';
const docs = JSON.parse(execFileSync('python3', ['-c', 'import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))', FILE], { encoding: 'utf8' })) as any[];
const byKind = (kind: string) => docs.filter((d) => d?.kind === kind);
const ds = byKind('DaemonSet')[0];
const pod = ds?.spec?.template?.spec;
const container = (name: string) => pod.containers.find((c: { name: string }) => c.name === name);
const hostPathOf = (mountPath: string, c: any) => {
  const m = c.volumeMounts.find((v: { mountPath: string }) => v.mountPath === mountPath);
  return m && pod.volumes.find((v: { name: string }) => v.name === m.name);
};

/** The environment a container's process gets: its ConfigMap's data, then its own env (no fieldRefs resolved). */
function envOf(c: any, nodeName: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const from of c.envFrom ?? []) {
    const cm = byKind('ConfigMap').find((m) => m.metadata.name === from.configMapRef.name && m.metadata.namespace === ds.metadata.namespace);
    expect(cm, `ConfigMap ${from.configMapRef.name}`).toBeDefined();
    Object.assign(env, cm.data);
  }
  for (const e of c.env ?? []) env[e.name] = e.valueFrom?.fieldRef?.fieldPath === 'spec.nodeName' ? nodeName : e.value;
  return env;
}

const scratch = mkdtempSync(join(tmpdir(), 'corral-k8s-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe('deploy/kubernetes/corral.yaml', () => {
  it('holds a namespace, service account, ConfigMap, Secret and a DaemonSet on the host network on every node', () => {
    expect(docs.map((d) => d.kind)).toEqual(['Namespace', 'ServiceAccount', 'ConfigMap', 'Secret', 'DaemonSet']);
    const ns = byKind('Namespace')[0].metadata.name;
    for (const d of docs.slice(1)) expect(d.metadata.namespace).toBe(ns);
    expect(ds.apiVersion).toBe('apps/v1');
    expect(ds.spec.selector.matchLabels).toEqual(ds.spec.template.metadata.labels);
    expect(pod.hostNetwork).toBe(true);
    expect(pod.tolerations).toContainEqual({ operator: 'Exists' });
    expect(pod.serviceAccountName).toBe(byKind('ServiceAccount')[0].metadata.name);
    // every mount names a volume of the pod
    const volumes = new Set(pod.volumes.map((v: { name: string }) => v.name));
    for (const c of [...pod.initContainers, ...pod.containers]) for (const m of c.volumeMounts ?? []) expect(volumes.has(m.name), `${c.name}: ${m.name}`).toBe(true);
  });

  it('gives the agent what it needs: settings its flag parser accepts, the node name, etcd credentials, and the host paths it works in', () => {
    const agent = container('agent');
    expect(agent.command).toEqual(['corral', 'agent']);
    expect(agent.securityContext.privileged).toBe(true);
    const env = envOf(agent, 'node-7');
    const o = daemonOptions(parseFlags([], DAEMON_FLAGS, env));
    expect(o.registry).toMatch(/^etcd:\/\//);
    expect(o.nodeName).toBe('node-7');
    expect(o.dockerSocket).toBe('');
    expect(o.dockerPluginSocket).toBe('');
    expect(o.clusterCidr).toBe('10.42.0.0/16');
    // etcd's TLS files are in the Secret mounted where the settings point
    const secret = byKind('Secret')[0];
    const etcdMount = agent.volumeMounts.find((m: { name: string }) => pod.volumes.find((v: any) => v.name === m.name)?.secret?.secretName === secret.metadata.name);
    expect(etcdMount).toBeDefined();
    for (const path of [o.mesh.etcdCa, o.mesh.etcdCert, o.mesh.etcdKey]) {
      expect(path.startsWith(`${etcdMount.mountPath}/`), path).toBe(true);
      expect(Object.keys(secret.stringData ?? secret.data)).toContain(path.slice(etcdMount.mountPath.length + 1));
    }
    // the socket the CNI plugin dials on the host, the state that must outlive the pod, the pod netns paths
    expect(hostPathOf('/run/corral', agent).hostPath.path).toBe('/run/corral');
    expect(o.agentSocket).toBe('/run/corral/agent.sock');
    expect(hostPathOf(o.stateDir, agent).hostPath.path).toBe(o.stateDir);
    const netns = agent.volumeMounts.find((m: { mountPath: string }) => m.mountPath === '/var/run/netns');
    expect(netns.mountPropagation).toBe('HostToContainer');
    expect(hostPathOf('/var/run/netns', agent).hostPath.path).toBe('/var/run/netns');
    expect(hostPathOf('/dev/net/tun', agent).hostPath.type).toBe('CharDevice');
    // DNS reads the same settings and the agent's socket
    const dns = container('dns');
    expect(dns.command).toEqual(['corral', 'dns']);
    const d = daemonOptions(parseFlags([], DAEMON_FLAGS, envOf(dns, 'node-7')));
    expect(d.dnsListen).toContain('gateway:53');
    expect(hostPathOf('/run/corral', dns).hostPath.path).toBe('/run/corral');
  });

  it('installs the plugin and conflist into the host\'s CNI dirs: the init container\'s script, run against a stand-in host', () => {
    const init = pod.initContainers.find((c: { name: string }) => c.name === 'install-cni');
    expect(hostPathOf('/host/opt/cni/bin', init).hostPath.path).toBe('/opt/cni/bin');
    expect(hostPathOf('/host/etc/cni/net.d', init).hostPath.path).toBe('/etc/cni/net.d');
    const [sh, flag, script] = init.command as string[];
    expect([sh, flag]).toEqual(['sh', '-c']);
    // The image's PATH: `corral` (this build) and `node`.
    const bin = join(scratch, 'image-bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'corral'), `#!/bin/sh\nexec ${process.execPath} ${resolve(CORRAL)} "$@"\n`, { mode: 0o755 });
    for (const d of ['opt/cni/bin', 'etc/cni/net.d']) mkdirSync(join(scratch, 'host', d), { recursive: true });
    execFileSync('sh', ['-c', script!.replaceAll('/host/', `${scratch}/host/`)], { env: { PATH: `${bin}:${process.env.PATH}` }, encoding: 'utf8' });
    const plugin = readFileSync(join(scratch, 'host/opt/cni/bin/corral'), 'utf8');
    expect(plugin.split('\n')[0]).toBe('#!/opt/cni/bin/corral-node');
    expect(statSync(join(scratch, 'host/opt/cni/bin/corral-node')).size).toBe(statSync(process.execPath).size);
    const conflist = JSON.parse(readFileSync(join(scratch, 'host/etc/cni/net.d/10-corral.conflist'), 'utf8'));
    expect(conflist.plugins[0]).toMatchObject({ type: 'corral', namespaceFromPod: true });
    expect(conflist.plugins[0].agentSocket ?? '/run/corral/agent.sock').toBe('/run/corral/agent.sock');
  });
});
