// The worker side of dir-snapshot.ts: lists each directory, reads every
// record file and lstats every other file. Per directory it posts the names
// first, then the record texts in chunks as it reads them (the main thread
// parses each chunk while the worker reads the next), then the lstats. Where
// the digest of the last clean shutdown still holds for a directory
// (dir-digest.ts), it posts the digest's record values first, in chunks for
// the main thread to parse, and then the digest's names and lstats, once a
// listing of the directory has shown the same names; it reads no record and
// lstats no image.
// Kept to node:fs and a few tiny modules so that it starts quickly.
import { lstatSync, readdirSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { digestListings, digestValueChunks, heldDirs, openDigest, sameNames } from './dir-digest.js';
import { joinNames, KIND, SNAPSHOT_CHUNK, type SnapshotGroup, type SnapshotMessage } from './dir-snapshot.js';
import { readSmallFileSync } from './read-small.js';
import { isAtomicTemp } from './temp-name.js';

const { groups, suffix, version } = workerData as { groups: SnapshotGroup[]; suffix: string; version: string };
const post = (m: SnapshotMessage) => parentPort!.postMessage(m);

function snapshot(dir: string, names: string[]): void {
  post({ dir, t: 'names', names: joinNames(names) });
  const kinds = new Uint8Array(names.length);
  const sizes = new Float64Array(names.length);
  let texts: (string | null)[] = [];
  let from = 0;
  for (let i = 0; i < names.length; i++) {
    if (texts.length === SNAPSHOT_CHUNK) {
      post({ dir, t: 'texts', from, texts });
      texts = [];
      from = i;
    }
    const name = names[i]!;
    let text: string | null = null;
    texts.push(null);
    if (isAtomicTemp(name)) continue;
    const path = `${dir}/${name}`;
    if (name.endsWith(suffix)) {
      try {
        text = readSmallFileSync(path);
      } catch {
        /* unreadable: the scan reports it */
      }
      texts[texts.length - 1] = text;
      continue;
    }
    try {
      const st = lstatSync(path, { throwIfNoEntry: false });
      if (!st) kinds[i] = KIND.gone;
      else {
        kinds[i] = st.isFile() ? KIND.file : KIND.other;
        sizes[i] = st.size;
      }
    } catch {
      kinds[i] = KIND.retry;
    }
  }
  if (texts.length) post({ dir, t: 'texts', from, texts });
  post({ dir, t: 'stats', kinds, sizes });
}

for (const g of groups) {
  const digest = g.digest ? openDigest(g.digest, version) : undefined;
  const held = digest ? heldDirs(digest, g.dirs) : new Set<number>();
  if (digest && held.size) {
    // The values first, so that the main thread parses them while this thread lists the directories.
    post({ dir: g.digest!, t: 'digest', held: [...held].map((i) => [digest.dirs[i]!.dir, digest.dirs[i]!.records]) });
    for (const c of digestValueChunks(digest, held, SNAPSHOT_CHUNK)) post({ dir: digest.dirs[c.i]!.dir, t: 'values', from: c.from, text: c.text });
  }
  const listings = digest && held.size ? digestListings(digest) : undefined;
  for (const dir of g.dirs) {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      post({ dir, t: 'failed' });
      continue;
    }
    const i = digest?.dirs.findIndex((d) => d.dir === dir) ?? -1;
    const listing = held.has(i) ? listings?.[i] : undefined;
    if (listing && sameNames(names, listing.names)) {
      post({ dir, t: 'names', names: joinNames(names), digest: true });
      post({ dir, t: 'stats', kinds: Uint8Array.from(listing.kinds), sizes: Float64Array.from(listing.sizes) });
      continue;
    }
    snapshot(dir, names);
  }
}
