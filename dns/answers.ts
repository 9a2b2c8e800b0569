// Pre-encoded authoritative answers per (name, type). Filled on the first query, dropped for
// exactly the names a zone patch touched (everything on a snapshot).
import { encodeAnswer, type Answer } from './wire.js';
import { DEFAULT_NAMESPACE } from '../api/types.js';
import type { Zone } from './zone.js';

/**
 * Bound on cached names beyond the zone's own, so queries for random nonexistent names cannot
 * grow memory, while every name the zone holds can stay cached (a fixed 50,000 cleared the whole
 * cache over and over once a zone had more names than that: every query a miss).
 */
const MAX_NAMES = 50_000;

export class AnswerCache {
  private readonly byName = new Map<string, Map<number, Answer>>();
  /** Answers to relative names (`web.corral.internal`), per client namespace: "<ns> <name>". */
  private readonly relative = new Map<string, Map<number, Answer>>();
  hits = 0;

  constructor(private readonly zone: Zone) {
    zone.onChange((c) => {
      if (c.names === null) this.byName.clear();
      else for (const n of c.names) this.byName.delete(n);
      // Any change may add or remove the names relative answers come from: drop them all.
      this.relative.clear();
    });
  }

  /**
   * The encoded answer for a query from `client`, or null when the name is not ours (forward it).
   * May throw on a bad name.
   */
  get(name: string, qtype: number, client: string): Answer | null {
    let types = this.byName.get(name);
    if (types !== undefined) {
      const hit = types.get(qtype);
      if (hit !== undefined) {
        this.hits++;
        return hit;
      }
    } else if (this.zone.isRelative(name)) {
      return this.relativeAnswer(name, qtype, this.zone.namespaceOf(client) ?? DEFAULT_NAMESPACE);
    }
    const sections = this.zone.answer(name, qtype);
    if (sections === null) return null;
    const answer = encodeAnswer(name, sections);
    if (types === undefined) {
      if (this.byName.size >= MAX_NAMES + this.zone.nameCount) this.byName.clear();
      this.byName.set(name, (types = new Map()));
    }
    types.set(qtype, answer);
    return answer;
  }

  private relativeAnswer(name: string, qtype: number, ns: string): Answer {
    const key = `${ns} ${name}`;
    let types = this.relative.get(key);
    const hit = types?.get(qtype);
    if (hit !== undefined) {
      this.hits++;
      return hit;
    }
    const answer = encodeAnswer(name, this.zone.answer(name, qtype, ns)!);
    if (types === undefined) {
      if (this.relative.size >= MAX_NAMES) this.relative.clear();
      this.relative.set(key, (types = new Map()));
    }
    types.set(qtype, answer);
    return answer;
  }

  get size(): number {
    return this.byName.size;
  }
}
