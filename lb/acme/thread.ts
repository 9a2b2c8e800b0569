// An LB thread's side of ACME: serve the certificates the main thread installs (a CertificateStore
// watching <state dir>/acme/certs), answer HTTP-01 from <state dir>/acme/challenges and TLS-ALPN-01
// from <state dir>/acme/alpn. ACME certificates win for their exact names; --tls-cert-dir's for the rest.
import type { SecureContext, Server as TlsServer } from 'node:tls';
import type { AcmeOptions } from '../../api/options.js';
import { CertificateStore } from '../tls.js';
import { AlpnChallenges } from './alpn.js';
import { acmeDirs, challengeReader, makeAcmeDirs } from './files.js';

export class AcmeThread {
  readonly certs: CertificateStore;
  readonly challenge: (token: string) => string | undefined;
  private alpn: AlpnChallenges | undefined;
  private namesOf: string[] = [];
  private names = new Set<string>();

  constructor(private readonly o: AcmeOptions) {
    const d = acmeDirs(o.dir);
    makeAcmeDirs(d);
    this.certs = CertificateStore.load(d.certs);
    this.challenge = challengeReader(d.challenges);
  }

  /** SNI: an ACME certificate for its exact name, else what `other` (--tls-cert-dir) has, else ours. */
  sni(other: CertificateStore | undefined): (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => void {
    if (!other) return this.certs.sniCallback;
    return (servername, cb) => {
      const names = this.certs.names;
      if (names !== this.namesOf) {
        this.namesOf = names;
        this.names = new Set(names);
      }
      const name = servername.toLowerCase();
      cb(null, this.names.has(name) ? this.certs.contextFor(name) : other.contextFor(name) ?? this.certs.contextFor(name));
    };
  }

  /** TLS-ALPN-01 on this thread's HTTPS server. */
  serve(server: TlsServer): void {
    if (this.o.challenge !== 'tls-alpn-01') return;
    this.alpn = new AlpnChallenges(acmeDirs(this.o.dir).alpn);
    this.alpn.intercept(server);
  }

  close(): void {
    this.certs.close();
    this.alpn?.close();
  }
}
