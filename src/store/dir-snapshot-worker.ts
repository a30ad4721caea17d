// The worker side of dir-snapshot.ts: lists each directory, reads every
// record file and lstats every other file. It posts the names first, then the
// record texts in chunks as it reads them (the main thread parses each chunk
// while the worker reads the next), then the lstats. Kept to node:fs and two
// tiny modules so that it starts quickly.
import { lstatSync, readdirSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { KIND, SNAPSHOT_CHUNK, type SnapshotMessage } from './dir-snapshot.js';
import { readSmallFileSync } from './read-small.js';
import { isAtomicTemp } from './temp-name.js';

const { dirs, suffix } = workerData as { dirs: string[]; suffix: string };
const post = (m: SnapshotMessage) => parentPort!.postMessage(m);

function snapshot(dir: string): void {
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch {
    post({ dir, t: 'failed' });
    return;
  }
  post({ dir, t: 'names', names });
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

for (const dir of dirs) snapshot(dir);
