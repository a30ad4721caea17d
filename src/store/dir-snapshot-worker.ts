// The worker side of dir-snapshot.ts: lists each directory, reads every
// record file and lstats every other file. Per directory it posts the names
// first, then the record texts in chunks as it reads them (the main thread
// parses each chunk while the worker reads the next), then the lstats. Where
// a group's digest from the last clean shutdown still holds (dir-digest.ts),
// it posts the digest's owner line and values instead, the values in chunks
// for the main thread to parse while it lists the directories, and then
// whether the listings matched; only when they did not does it read the
// directories as above. Kept to node:fs and a few tiny modules so that it
// starts quickly.
import { readdirSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { digestExtra, digestListings, digestValueChunks, dropDigest, holdsFor, kindOf, openDigest, sameNames } from './dir-digest.js';
import { joinNames, SNAPSHOT_CHUNK, type SnapshotGroup, type SnapshotMessage } from './dir-snapshot.js';
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
    ({ kind: kinds[i], size: sizes[i] } = kindOf(path));
  }
  if (texts.length) post({ dir, t: 'texts', from, texts });
  post({ dir, t: 'stats', kinds, sizes });
}

/** Whether each directory lists exactly the names the digest lists for it. */
function listingsMatch(dirs: readonly string[], listings: { names: string[] }[] | undefined): boolean {
  if (!listings) return false;
  return dirs.every((dir, i) => {
    try {
      return sameNames(readdirSync(dir).sort(), listings[i]!.names);
    } catch {
      return false;
    }
  });
}

for (const g of groups) {
  const digest = g.digest ? openDigest(g.digest, version) : undefined;
  let held = false;
  if (digest && holdsFor(digest, g.dirs)) {
    // The values first, so that the main thread parses them while this thread lists the directories.
    post({ dir: g.digest!, t: 'digest', values: digest.values, extra: digestExtra(digest) });
    for (const c of digestValueChunks(digest, SNAPSHOT_CHUNK)) post({ dir: g.digest!, t: 'values', from: c.from, text: c.text });
    held = listingsMatch(g.dirs, digestListings(digest));
  }
  // Read or not, it has served: the start removes it before its first change, and this spares the main thread that wait.
  if (g.digest) {
    try {
      dropDigest(g.digest);
    } catch {
      /* the start's own removal reports it */
    }
    post({ dir: g.digest, t: 'checked', held });
  }
  if (held) continue;
  for (const dir of g.dirs) {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      post({ dir, t: 'failed' });
      continue;
    }
    snapshot(dir, names);
  }
}
