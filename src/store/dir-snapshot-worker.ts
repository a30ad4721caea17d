// The worker side of dir-snapshot.ts: lists each directory, reads every
// record file and lstats every other file, and posts one DirSnapshot per
// directory. Kept to node:fs and two tiny modules so that it starts quickly.
import { lstatSync, readdirSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { isAtomicTemp } from './atomic-file.js';
import { KIND, type DirSnapshot } from './dir-snapshot.js';
import { readSmallFileSync } from './read-small.js';

const { dirs, suffix } = workerData as { dirs: string[]; suffix: string };

function snapshot(dir: string): DirSnapshot | undefined {
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch {
    return undefined;
  }
  const texts: (string | null)[] = new Array<string | null>(names.length).fill(null);
  const kinds = new Uint8Array(names.length);
  const sizes = new Float64Array(names.length);
  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    if (isAtomicTemp(name)) continue;
    const path = `${dir}/${name}`;
    if (name.endsWith(suffix)) {
      try {
        texts[i] = readSmallFileSync(path);
      } catch {
        /* unreadable: the scan reports it */
      }
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
  return { dir, names, texts, kinds, sizes };
}

for (const dir of dirs) parentPort!.postMessage({ dir, snap: snapshot(dir) });
