// WireGuard in userspace: the agent starts `wireguard-go <ifname>` (in the foreground) and
// configures it over the standard UAPI socket /var/run/wireguard/<ifname>.sock (text protocol,
// set=1 / get=1). It outlives the agent: an agent that stops or is killed leaves it running, and
// the next one adopts it with its peers.
//
// Where it runs: in a process group of its own (so a Ctrl-C or a signal to the agent's group does
// not reach it) but in the agent's session. Not setsid(): with the kernel's autogroup scheduler
// (CONFIG_SCHED_AUTOGROUP, on by default) every session is one scheduling group with an equal
// CPU share, so a wireguard-go alone in a session of its own gets about 20% less throughput on a
// contended CPU than one in its launcher's session (test/bench/overlay.ts). perl (Essential on
// Debian/Ubuntu) does the setpgid before exec'ing wireguard-go, so the pid the agent holds is
// wireguard-go's own.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, closeSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { linkExists } from './link.js';
import { OverlayError, type DeviceConfig, type PeerChange, type WireGuardPeer, type WireGuardDevice } from './overlay.js';

export const UAPI_DIR = '/var/run/wireguard';
const UAPI_TIMEOUT_MS = 3000;
/** Up to this many new peers in one change get their endpoints (and first handshake) in the first set. */
const FEW_NEW_PEERS = 16;
const UAPI_MS_PER_PEER = 20;

const hex = (b64: string) => Buffer.from(b64, 'base64').toString('hex');
const b64 = (hx: string) => Buffer.from(hx, 'hex').toString('base64');

/** setpgid(0, 0), then exec the command; 127 when it cannot be exec'd. */
const SETPGID_EXEC = 'setpgrp(0, 0); exec { $ARGV[0] } @ARGV or do { print STDERR "exec $ARGV[0]: $!\\n"; exit 127 }';

export class WireGuardGo implements WireGuardDevice {
  readonly kind = 'wireguard-go';
  private ifname = '';
  onExit?: (why: string) => void;

  /** runDir holds wireguard-go's pid file and log. */
  constructor(private readonly runDir: string) {}

  get socketPath(): string {
    return join(UAPI_DIR, `${this.ifname}.sock`);
  }

  async up(cfg: DeviceConfig): Promise<void> {
    this.ifname = cfg.ifname;
    if (!(await this.answers())) await this.start();
    await this.uapiSet([`private_key=${cfg.privateKey.toString('hex')}`, `listen_port=${cfg.listenPort}`]);
  }

  async setPrivateKey(key: Buffer): Promise<void> {
    await this.uapiSet([`private_key=${key.toString('hex')}`]);
  }

  async setPeers(changes: PeerChange[]): Promise<void> {
    if (changes.length === 0) return;
    // Up to two sets: first keys, keepalive, allowed IPs, removals and the endpoints of peers the
    // device has (in order), then the endpoints of new ones. wireguard-go sends a new peer with
    // keepalive a handshake initiation inside the set, under its config lock, through a blocking
    // sendmsg; towards endpoints whose ARP never resolves each one holds send buffer for ~3 s, and
    // past ~200 of them the set (and every get) waits behind the handshake retries of the peers
    // already started. Without an endpoint yet, that initiation fails at once, and the endpoint
    // set within RekeyTimeout (5 s) sends none: wireguard-go's retransmit timer sends the first
    // handshake ~5 s later, outside the lock. Peers it has keep their endpoint in the first set, as
    // before: a key rotation's promoted peer, an endpoint that moved. A few new peers (a host
    // joined) fill no send buffer: their endpoints go in the first set and handshake at once.
    const onDevice = new Set((await this.peers()).map((p) => p.publicKey));
    let added = 0;
    for (const c of changes) if (!('remove' in c) && !onDevice.has(c.publicKey)) added++;
    const deferEndpoints = added > FEW_NEW_PEERS;
    const config: string[] = [];
    const later = new Map<string, string>(); // new peers' endpoints, the last word per key; "" = removed
    for (const c of changes) {
      config.push(`public_key=${hex(c.publicKey)}`);
      if ('remove' in c) {
        config.push('remove=true');
        onDevice.delete(c.publicKey);
        if (later.has(c.publicKey)) later.set(c.publicKey, '');
        continue;
      }
      if (onDevice.has(c.publicKey) || !deferEndpoints) {
        if (c.endpoint) config.push(`endpoint=${c.endpoint}`);
      } else {
        later.set(c.publicKey, c.endpoint);
      }
      config.push(`persistent_keepalive_interval=${c.keepaliveS ?? 0}`, 'replace_allowed_ips=true', ...c.allowedIps.map((a) => `allowed_ip=${a}`));
    }
    await this.uapiSet(config);
    const endpoints: string[] = [];
    for (const [key, endpoint] of later) {
      // update_only: a peer removed meanwhile is not made again.
      if (endpoint) endpoints.push(`public_key=${hex(key)}`, 'update_only=true', `endpoint=${endpoint}`);
    }
    if (endpoints.length > 0) await this.uapiSet(endpoints);
  }

  async peers(): Promise<WireGuardPeer[]> {
    const text = await this.uapi('get=1\n\n');
    const out: WireGuardPeer[] = [];
    let cur: WireGuardPeer | undefined;
    let sec = 0;
    for (const line of text.split('\n')) {
      const i = line.indexOf('=');
      if (i < 0) continue;
      const k = line.slice(0, i);
      const v = line.slice(i + 1);
      if (k === 'public_key') {
        cur = { publicKey: b64(v), endpoint: '', allowedIps: [], keepaliveS: 0, lastHandshakeMs: 0, rxBytes: 0, txBytes: 0 };
        out.push(cur);
      } else if (!cur) {
        continue;
      } else if (k === 'endpoint') cur.endpoint = v;
      else if (k === 'allowed_ip') cur.allowedIps.push(v);
      else if (k === 'persistent_keepalive_interval') cur.keepaliveS = Number(v);
      else if (k === 'last_handshake_time_sec') sec = Number(v);
      else if (k === 'last_handshake_time_nsec') cur.lastHandshakeMs = sec * 1000 + Math.floor(Number(v) / 1e6);
      else if (k === 'rx_bytes') cur.rxBytes = Number(v);
      else if (k === 'tx_bytes') cur.txBytes = Number(v);
    }
    return out;
  }

  async close(): Promise<void> {}

  async destroy(): Promise<void> {
    const pid = this.pid();
    if (pid) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
    rmSync(this.pidFile(), { force: true });
  }

  private pidFile(): string {
    return join(this.runDir, `wireguard-go-${this.ifname}.pid`);
  }

  private pid(): number | undefined {
    try {
      return Number(readFileSync(this.pidFile(), 'utf8').trim()) || undefined;
    } catch {
      return undefined;
    }
  }

  private async start(): Promise<void> {
    // A socket left by a dead wireguard-go would make the new one refuse to start; one that still
    // takes connections is a live wireguard-go too busy to answer in time (see the README's known
    // limits): removing it would cut the agent off from that process for good.
    if (await this.listenedOn()) throw new OverlayError(`wireguard-go ${this.ifname} takes connections on ${this.socketPath} but did not answer in time; it is kept and asked again later`);
    rmSync(this.socketPath, { force: true });
    if (await linkExists(this.ifname)) throw new OverlayError(`interface ${this.ifname} exists but no wireguard-go answers on ${this.socketPath}: delete the interface or choose --wg-interface`);
    mkdirSync(this.runDir, { recursive: true });
    const logFd = openSync(join(this.runDir, `wireguard-go-${this.ifname}.log`), 'a');
    let child;
    try {
      const perl = existsSync('/usr/bin/perl');
      child = spawn(perl ? '/usr/bin/perl' : 'wireguard-go', perl ? ['-e', SETPGID_EXEC, 'wireguard-go', this.ifname] : [this.ifname], {
        stdio: ['ignore', logFd, logFd],
        env: { ...process.env, WG_PROCESS_FOREGROUND: '1', LOG_LEVEL: 'error' },
      });
    } finally {
      closeSync(logFd);
    }
    const failed = new Promise<Error>((res) => child.once('error', res));
    child.unref();
    const deadline = Date.now() + 5000;
    for (;;) {
      const err = await Promise.race([failed, new Promise<undefined>((r) => setTimeout(r, 20))]);
      if (err) throw new OverlayError(`cannot start wireguard-go: ${err.message}; install it (apt-get install wireguard-go) or use the kernel module`);
      if (child.exitCode === 127) throw new OverlayError('cannot start wireguard-go: not found on PATH; install it (apt-get install wireguard-go) or use the kernel module');
      if (child.exitCode !== null) throw new OverlayError(`wireguard-go ${this.ifname} exited with ${child.exitCode}; see ${join(this.runDir, `wireguard-go-${this.ifname}.log`)}`);
      if (existsSync(this.socketPath) && (await this.answers())) break;
      if (Date.now() > deadline) throw new OverlayError(`wireguard-go ${this.ifname} did not open ${this.socketPath} within 5 s`);
    }
    writeFileSync(this.pidFile(), String(child.pid));
    child.once('exit', (code, signal) => this.onExit?.(signal ? `killed by ${signal}` : `exited with ${code}`));
  }

  /** Whether a process listens on the UAPI socket (refused or missing: no one does). */
  private listenedOn(): Promise<boolean> {
    return new Promise((resolve) => {
      const sock = connect(this.socketPath);
      sock.once('connect', () => {
        sock.destroy();
        resolve(true);
      });
      sock.once('error', (err: NodeJS.ErrnoException) => resolve(err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT'));
    });
  }

  private async answers(): Promise<boolean> {
    try {
      await this.uapi('get=1\n\n');
      return true;
    } catch {
      return false;
    }
  }

  private async uapiSet(lines: string[]): Promise<void> {
    // Each new peer costs wireguard-go a key agreement (1,000 take ~0.2-0.7 s here, more on a
    // busy host), so the deadline grows with the batch.
    const peers = lines.reduce((n, l) => (l.startsWith('public_key=') ? n + 1 : n), 0);
    await this.uapi(`set=1\n${lines.join('\n')}\n\n`, UAPI_TIMEOUT_MS + peers * UAPI_MS_PER_PEER);
  }

  /** One request on a fresh connection; resolves with the reply once "errno=N" and the blank line arrive. */
  private uapi(request: string, timeoutMs = UAPI_TIMEOUT_MS): Promise<string> {
    return new Promise((resolve, reject) => {
      const sock = connect(this.socketPath);
      let buf = '';
      const timer = setTimeout(() => sock.destroy(new Error(`UAPI timeout after ${timeoutMs} ms`)), timeoutMs);
      sock.setEncoding('utf8');
      sock.on('connect', () => sock.write(request));
      sock.on('data', (d: string) => {
        buf += d;
        const m = /(?:^|\n)errno=(-?\d+)\n\n/.exec(buf);
        if (!m) return;
        clearTimeout(timer);
        sock.end();
        if (m[1] !== '0') reject(new OverlayError(`wireguard-go ${this.ifname} refused the configuration (errno ${m[1]})`));
        else resolve(buf);
      });
      sock.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }
}
