import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Code } from '../../src/errors/domain-error.js';
import { csiNode, eventually, persistentVolume, volumeAttachment } from '../helpers/kube-api-standin.js';
import { DRIVER, KubeFixture } from '../helpers/kube-fixture.js';
import { objectContaining } from '../helpers/matchers.js';

const VOL_A = 'b1-00000000-0000-4000-8000-00000000000a';
const VOL_B = 'b1-00000000-0000-4000-8000-00000000000b';

describe('Kubernetes caches against an HTTP stand-in for the API server (real @kubernetes/client-node)', () => {
  let fx: KubeFixture;
  beforeEach(() => {
    fx = new KubeFixture();
  });
  afterEach(async () => fx.cleanup());

  const seed = () => {
    const s = fx.standin;
    s.create('persistentvolumes', persistentVolume('pv-a', VOL_A));
    s.create('persistentvolumes', persistentVolume('pv-other', 'vol-of-another-driver', 'other.csi.io'));
    s.create('csinodes', csiNode('node-1', [{ name: DRIVER, nodeID: 'node-1;;' }]));
    s.create('csinodes', csiNode('node-2', [{ name: 'other.csi.io', nodeID: 'x' }]));
    s.create('volumeattachments', volumeAttachment('va-a', { nodeName: 'node-1', pvName: 'pv-a', attached: true }));
    s.create('volumeattachments', volumeAttachment('va-other', { nodeName: 'node-1', pvName: 'pv-other', attacher: 'other.csi.io', attached: true }));
  };

  it('fills from a list, keeps only our driver, and follows watch events without listing again', async () => {
    await fx.setUp();
    seed();
    const cache = fx.cache();
    cache.start();
    await eventually(() => cache.live, 'the cache to sync');

    expect(cache.attachments()).toEqual([{ name: 'va-a', volumeId: VOL_A, nodeName: 'node-1', nodeId: 'node-1;;', attached: true, deleting: false }]);
    expect(cache.nodeIdOf('node-1')).toBe('node-1;;');
    expect(cache.nodeIdOf('node-2')).toBeUndefined();
    expect(cache.hasNodeId('node-1;;')).toBe(true);
    expect(cache.persistentVolumes.get('pv-other')).toBeUndefined();
    const listsAfterSync = fx.standin.lists();
    expect(listsAfterSync).toBe(3);

    // Watch events: add, modify (deleting), delete; a new node; a PV arriving after its VA.
    fx.standin.create('volumeattachments', volumeAttachment('va-b', { nodeName: 'node-3', pvName: 'pv-b' }));
    await eventually(() => cache.volumeAttachments.get('va-b'), 'va-b to arrive');
    expect(cache.attachmentsOfVolume(VOL_B)).toEqual([]); // its PV is not known yet
    fx.standin.create('persistentvolumes', persistentVolume('pv-b', VOL_B));
    fx.standin.create('csinodes', csiNode('node-3', [{ name: DRIVER, nodeID: 'node-3;iqn.2004-10.com.ubuntu:01:abc;' }]));
    await eventually(() => cache.attachmentsOfVolume(VOL_B)[0]?.nodeId === 'node-3;iqn.2004-10.com.ubuntu:01:abc;', 'va-b to resolve');

    fx.standin.update('volumeattachments', 'va-a', (o) => {
      o.metadata.deletionTimestamp = new Date().toISOString();
    });
    await eventually(() => cache.attachmentsOfVolume(VOL_A)[0]?.deleting, 'va-a to be marked deleting');
    fx.standin.remove('volumeattachments', 'va-a');
    await eventually(() => cache.attachmentsOfVolume(VOL_A).length === 0, 'va-a to go');
    // An object that stops being ours is dropped like a delete.
    fx.standin.update('csinodes', 'node-1', (o) => {
      (o.spec as { drivers: unknown[] }).drivers = [];
    });
    await eventually(() => !cache.hasNodeId('node-1;;'), 'node-1 to lose our driver');

    // Reads are served from memory: no list per read.
    for (let i = 0; i < 100; i++) cache.volumeAttachmentNodes(VOL_B);
    expect(fx.standin.lists()).toBe(listsAfterSync);
    expect(cache.volumeAttachmentNodes(VOL_B)).toEqual(['node-3']);
  });

  it('lists in pages (limit/continue) and relists from scratch when a continue token expires', async () => {
    await fx.setUp();
    for (let i = 0; i < 7; i++) fx.standin.create('persistentvolumes', persistentVolume(`pv-${i}`, `b1-00000000-0000-4000-8000-00000000000${i}`));
    // The first time a second page is asked for, the server has compacted: the token is too old.
    let expired = false;
    fx.standin.beforeList = (resource, token) => {
      if (resource === 'persistentvolumes' && token && !expired) {
        expired = true;
        fx.standin.compact();
      }
    };
    const cache = fx.cache({ pageSize: 3 });
    cache.start();
    await eventually(() => cache.live, 'the cache to sync');
    expect(expired).toBe(true);
    expect(cache.persistentVolumes.size).toBe(7);
    expect([...cache.persistentVolumes.values()].map((p) => p.name).sort()).toEqual(['pv-0', 'pv-1', 'pv-2', 'pv-3', 'pv-4', 'pv-5', 'pv-6']);
    // 2 pages (the second refused with 410), then 3 pages from scratch.
    expect(fx.standin.lists('persistentvolumes')).toBe(5);
    expect(cache.persistentVolumes.counters.relists).toBe(2);
  });

  it('reconnects from its resourceVersion after the server drops the watch stream, without listing again', async () => {
    await fx.setUp();
    seed();
    const cache = fx.cache();
    cache.start();
    await eventually(() => cache.live && fx.standin.openWatches() === 3, 'three open watches');
    const lists = fx.standin.lists();
    const watches = fx.standin.watchRequests();

    // Cut the connections (no clean end), then change things while nobody watches.
    expect(fx.standin.dropWatches('destroy')).toBe(3);
    fx.standin.create('volumeattachments', volumeAttachment('va-b', { nodeName: 'node-1', pvName: 'pv-a', attached: false }));
    await eventually(() => cache.volumeAttachments.get('va-b'), 'the event made while disconnected');
    await eventually(() => fx.standin.openWatches() === 3, 'the watches to reopen');

    // And a clean end of the stream (the server's own timeout) too.
    fx.standin.dropWatches('end');
    await eventually(() => fx.standin.openWatches() === 3, 'the watches to reopen after a clean end');
    fx.standin.remove('volumeattachments', 'va-b');
    await eventually(() => !cache.volumeAttachments.get('va-b'), 'the delete after the reconnect');

    expect(fx.standin.lists()).toBe(lists);
    expect(fx.standin.watchRequests()).toBeGreaterThanOrEqual(watches + 6);
    // Every reconnect resumed from a resourceVersion, never from scratch.
    expect(fx.standin.requests.filter((r) => r.watch).every((r) => Number(r.query.get('resourceVersion')) > 0)).toBe(true);
    expect(cache.live).toBe(true);
  });

  for (const goneAs of ['event', 'http'] as const) {
    it(`relists after 410 Gone (${goneAs === 'event' ? 'an ERROR event in the stream' : 'the HTTP status of the watch request'}), dropping what vanished meanwhile`, async () => {
      await fx.setUp();
      seed();
      fx.standin.goneAs = goneAs;
      const cache = fx.cache();
      cache.start();
      await eventually(() => cache.live && fx.standin.openWatches() === 3, 'three open watches');
      const relists = cache.volumeAttachments.counters.relists;
      const deleted: string[] = [];
      cache.volumeAttachments.onChange((ev, name) => ev === 'deleted' && deleted.push(name));

      // While disconnected: one object goes, one comes, and history is compacted.
      fx.standin.dropWatches('destroy');
      await fx.standin.stop();
      const port = fx.standin.port;
      fx.standin.remove('volumeattachments', 'va-a');
      fx.standin.create('volumeattachments', volumeAttachment('va-new', { nodeName: 'node-1', pvName: 'pv-a', attached: true }));
      fx.standin.compact();
      await fx.standin.start(port);

      await eventually(() => cache.volumeAttachments.get('va-new') && !cache.volumeAttachments.get('va-a'), 'the relist to replace the cache');
      expect(deleted).toEqual(['va-a']);
      expect(cache.volumeAttachments.counters.gone).toBeGreaterThanOrEqual(1);
      await eventually(() => cache.live && fx.standin.openWatches() === 3, 'live again, watching');
      // The new watch follows changes again.
      fx.standin.remove('volumeattachments', 'va-new');
      await eventually(() => !cache.volumeAttachments.get('va-new'), 'a watch event after the relist');
      // One relist per cache, no loop of 410s.
      expect(cache.volumeAttachments.counters.relists).toBe(relists + 1);
      expect(cache.volumeAttachments.counters.gone).toBe(1);
    });
  }

  it('starts while the API server is down: not synced, DeleteVolume check UNAVAILABLE, one warning; syncs once the server is up', async () => {
    await fx.setUp(false);
    const cache = fx.cache();
    cache.start();
    await eventually(() => cache.volumeAttachments.counters.failures >= 4, 'several failed attempts');
    expect(cache.synced).toBe(false);
    expect(cache.live).toBe(false);
    expect(() => cache.volumeAttachmentNodes(VOL_A)).toThrow(objectContaining({ code: Code.UNAVAILABLE }));
    expect(fx.logged(/Kubernetes API unreachable/)).toHaveLength(1);

    await fx.standin.start();
    seed();
    await eventually(() => cache.live, 'the cache to sync once the server is up', 5000);
    expect(cache.volumeAttachmentNodes(VOL_A)).toEqual(['node-1']);
    expect(fx.logged(/Kubernetes caches synced/)).toHaveLength(1);

    // Down again and back: one warning, one recovery line, however many retries.
    await fx.standin.stop();
    await eventually(() => !cache.live, 'the cache to notice the outage');
    await eventually(() => cache.csiNodes.counters.failures >= 8, 'retries during the outage');
    expect(cache.volumeAttachmentNodes(VOL_A)).toEqual(['node-1']); // last known state
    await fx.standin.start(fx.standin.port);
    await eventually(() => cache.live, 'the cache to recover');
    expect(fx.logged(/Kubernetes API unreachable/)).toHaveLength(2);
    expect(fx.logged(/reachable again/)).toHaveLength(1);
  });

  it('retries with backoff while the server answers errors (503), keeping its last known state', async () => {
    await fx.setUp();
    seed();
    const cache = fx.cache();
    cache.start();
    await eventually(() => cache.live, 'sync');
    fx.standin.failWith = 503;
    fx.standin.dropWatches('destroy');
    await eventually(() => !cache.live, 'not live');
    const t0 = fx.standin.requests.length;
    await new Promise((r) => setTimeout(r, 500));
    // With 20 ms doubling to a 200 ms cap, 3 caches make at most ~20 requests in 500 ms, not hundreds.
    expect(fx.standin.requests.length - t0).toBeLessThan(30);
    expect(cache.attachments()).toHaveLength(1);
    fx.standin.failWith = undefined;
    await eventually(() => cache.live, 'live again');
  });

  it('stop() closes its watches and ends its loops', async () => {
    await fx.setUp();
    seed();
    const cache = fx.cache();
    cache.start();
    await eventually(() => fx.standin.openWatches() === 3, 'three open watches');
    await cache.stop();
    await eventually(() => fx.standin.openWatches() === 0, 'the server to see the watches closed');
    const n = fx.standin.requests.length;
    await new Promise((r) => setTimeout(r, 100));
    expect(fx.standin.requests.length).toBe(n);
  });
});
