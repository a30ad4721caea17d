// The worker side of dir-snapshot.ts: lists each directory, reads every
// record file and lstats every other file. Per directory it posts the names
// first, then the record texts in chunks as it reads them (the main thread
// parses each chunk while the worker reads the next), then the lstats. Where
// the digest of the last clean shutdown still holds for a directory
// (dir-digest.ts), it posts the digest's body first, for the main thread to
// parse, and then the digest's names and lstats, once a listing of the
// directory has shown the same names; it reads no record and lstats no image.
// Kept to node:fs and a few tiny modules so that it starts quickly.
import { lstatSync, readdirSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { checkDigest, sameNames } from './dir-digest.js';
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
  const digest = g.digest ? checkDigest(g.digest, version, g.dirs) : undefined;
  // First, so that the main thread parses the body while this thread lists the directories.
  if (digest) post({ dir: g.digest!, t: 'digest', body: digest.body, index: [...digest.parts].map(([dir, p]) => [dir, p.i]) });
  for (const dir of g.dirs) {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      post({ dir, t: 'failed' });
      continue;
    }
    const part = digest?.parts.get(dir);
    if (part && sameNames(names, part.names)) {
      post({ dir, t: 'names', names: joinNames(names), digest: true });
      post({ dir, t: 'stats', kinds: Uint8Array.from(part.kinds), sizes: Float64Array.from(part.sizes) });
      continue;
    }
    snapshot(dir, names);
  }
}
