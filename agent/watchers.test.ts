import { describe, expect, it } from 'vitest';
import { emptyEvent, type WatchEvent } from '../api/types.js';
import { Watchers } from './watchers.js';

function delta(revision: number, id: string): WatchEvent {
  const ev = emptyEvent(revision, false);
  ev.deletedEndpoints.push(id);
  return ev;
}

describe('a consumer older than the agent\'s history', () => {
  const current = { revision: 10, snapshot: () => ({ ...emptyEvent(current.revision, true), deletedEndpoints: ['snapshot'] }) };

  it('gets its delta first, then only the events the delta did not cover, in order', async () => {
    let answer!: (ev: WatchEvent | null) => void;
    const asked: number[] = [];
    const w = new Watchers(current, (from) => {
      asked.push(from);
      return new Promise((r) => (answer = r));
    });
    w.reset(10);
    const got: WatchEvent[] = [];
    w.watch({ component: 'dns', kinds: [], fromRevision: 4 }, (ev) => got.push(ev));
    expect(asked).toEqual([4]);
    // Events while the delta is worked out wait for it.
    w.broadcast(delta(11, 'a'));
    w.broadcast(delta(12, 'b'));
    expect(got).toEqual([]);
    answer(delta(11, 'd'));
    await new Promise((r) => setImmediate(r));
    expect(got.map((e) => [e.revision, e.deletedEndpoints[0]])).toEqual([[11, 'd'], [12, 'b']]);
    w.broadcast(delta(13, 'c'));
    expect(got.at(-1)!.revision).toBe(13);
  });

  it('takes a snapshot when no delta can be made, or when working it out fails', async () => {
    for (const resume of [async () => null, async () => { throw new Error('etcd did not answer'); }]) {
      const w = new Watchers(current, resume);
      w.reset(10);
      const got: WatchEvent[] = [];
      w.watch({ component: 'lb', kinds: [], fromRevision: 3 }, (ev) => got.push(ev));
      await new Promise((r) => setImmediate(r));
      expect(got).toHaveLength(1);
      expect(got[0]!.snapshot).toBe(true);
    }
  });

  it('sends nothing after the consumer went away while its delta was worked out', async () => {
    let answer!: (ev: WatchEvent | null) => void;
    const w = new Watchers(current, () => new Promise((r) => (answer = r)));
    w.reset(10);
    const got: WatchEvent[] = [];
    const stop = w.watch({ component: 'dns', kinds: [], fromRevision: 4 }, (ev) => got.push(ev));
    stop();
    answer(delta(10, 'd'));
    w.broadcast(delta(11, 'a'));
    await new Promise((r) => setImmediate(r));
    expect(got).toEqual([]);
  });
});

describe('events still being batched by the agent', () => {
  it('a resumed consumer is closed at the last revision sent, not the catalog\'s, and status claims no more', () => {
    const current = { revision: 12, snapshot: () => emptyEvent(12, true) }; // 12 applied to the catalog, not sent yet
    const w = new Watchers(current);
    w.reset(10);
    w.broadcast(delta(11, 'a'));
    const got: WatchEvent[] = [];
    w.watch({ component: 'dns', kinds: [], fromRevision: 10 }, (ev) => got.push(ev));
    expect(got.map((e) => e.revision)).toEqual([11]);
    w.ack('dns', 11);
    w.watching('dns', 1);
    expect(w.status()).toEqual([{ component: 'dns', appliedRevision: 11, connected: true }]);
    w.broadcast(delta(12, 'b'));
    expect(got.map((e) => e.revision)).toEqual([11, 12]);
  });

  it('a delta of only the kinds a consumer asked for reaches it as the same object (one encoding for every stream)', () => {
    const w = new Watchers({ snapshot: () => emptyEvent(1, true) });
    w.reset(1);
    const lb: WatchEvent[] = [];
    const dns: WatchEvent[] = [];
    w.watch({ component: 'lb', kinds: ['endpoints', 'services'], fromRevision: 1 }, (ev) => lb.push(ev));
    w.watch({ component: 'dns', kinds: [], fromRevision: 1 }, (ev) => dns.push(ev));
    lb.length = dns.length = 0; // each got the empty event that closes its resume at revision 1
    const ev = delta(2, 'a');
    w.broadcast(ev);
    expect(lb[0]).toBe(ev);
    expect(dns[0]).toBe(ev);
    const withHost = { ...delta(3, 'b'), deletedHosts: ['h9'] };
    w.broadcast(withHost);
    expect(lb[1]).not.toBe(withHost);
    expect(lb[1]!.deletedHosts).toEqual([]);
    expect(lb[1]!.deletedEndpoints).toEqual(['b']);
    expect(dns[1]).toBe(withHost);
  });
});
