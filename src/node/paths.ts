import { lstat, realpath } from 'node:fs/promises';
import { posix } from 'node:path';
import { invalidArgument, notFound } from '../errors/domain-error.js';
import { shown } from '../errors/domain-error.js';

export const MAX_PATH_LENGTH = 4096;

export type Confined =
  | { ok: true; path: string; root: string; resolved: string; exists: boolean }
  | { ok: false; why: string };

export function isUnder(child: string, parent: string): boolean {
  return parent === '/' ? child.startsWith('/') && child !== '/' : child.startsWith(parent + '/');
}

function normalizeRoot(r: string): string {
  if (!r.startsWith('/')) throw new Error(`allowed root "${r}" is not an absolute path`);
  const n = posix.normalize(r);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

/** Walks up from p to the longest prefix that exists (lstat), returns it and the rest. */
async function longestExisting(p: string): Promise<{ prefix: string; rest: string[] }> {
  let cur = p;
  const rest: string[] = [];
  for (;;) {
    try {
      await lstat(cur);
      return { prefix: cur, rest };
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || cur === '/') throw e;
      rest.unshift(posix.basename(cur));
      cur = posix.dirname(cur);
    }
  }
}

/**
 * Decides whether p is a path inside one of roots, strictly below it:
 * absolute, normalized (no '.', '..', '//', trailing '/'), and the real path of
 * its longest existing prefix stays under the real path of the root, so a
 * symlink cannot lead out. Touches nothing; only lstat/realpath.
 */
export async function confine(p: string, roots: readonly string[]): Promise<Confined> {
  if (p.includes('\0')) return { ok: false, why: 'contains a NUL byte' };
  if (p.length > MAX_PATH_LENGTH) return { ok: false, why: `is longer than ${MAX_PATH_LENGTH} characters` };
  if (!p.startsWith('/')) return { ok: false, why: 'is not an absolute path' };
  if (posix.normalize(p) !== p || (p.length > 1 && p.endsWith('/')))
    return { ok: false, why: "is not a normalized path (no '.', '..', '//' or trailing '/' allowed)" };
  const root = roots
    .map(normalizeRoot)
    .filter((r) => isUnder(p, r))
    .sort((a, b) => b.length - a.length)[0];
  if (root === undefined) return { ok: false, why: `is not under any allowed directory (${roots.join(', ') || 'none configured'})` };
  // The root's real path and the walk are independent lookups: side by side, one thread-pool round trip less to wait for.
  const [realRoot, walked] = await Promise.all([
    realpath(root).catch(() => undefined),
    longestExisting(p).then(
      (w) => ({ w }),
      (e: unknown) => ({ e }),
    ),
  ]);
  if (realRoot === undefined) return { ok: false, why: `is under ${root}, which does not exist on this node` };
  let prefix = '';
  let rest: string[] = [];
  let realPrefix = '';
  for (let attempt = 1; ; attempt++) {
    try {
      if (attempt === 1 && 'e' in walked) throw walked.e;
      ({ prefix, rest } = attempt === 1 && 'w' in walked ? walked.w : await longestExisting(p));
      realPrefix = await realpath(prefix);
      break;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? 'error';
      // The prefix vanished between lstat and realpath (a concurrent unpublish removed the target): walk again.
      if (code === 'ENOENT' && attempt < 5 && !(await lstat(prefix).then((st) => st.isSymbolicLink(), () => false))) continue;
      // A symlink that points nowhere, a loop (ELOOP), a name too long, no permission: not a usable path.
      return { ok: false, why: `cannot be resolved (${code}${code === 'ENOENT' ? ': a symbolic link on the way points nowhere' : ''})` };
    }
  }
  if (realPrefix !== realRoot && !isUnder(realPrefix, realRoot))
    return { ok: false, why: `leads outside ${root} through a symbolic link (${prefix} resolves to ${realPrefix})` };
  const resolved = rest.length ? posix.join(realPrefix, ...rest) : realPrefix;
  if (!isUnder(resolved, realRoot)) return { ok: false, why: `resolves to the allowed directory ${root} itself, not a path inside it` };
  return { ok: true, path: p, root, resolved, exists: rest.length === 0 };
}

/**
 * Paths the CO asks the node to create or mount at (staging_target_path,
 * target_path): anything outside the kubelet roots is INVALID_ARGUMENT.
 */
export class KubeletPaths {
  readonly roots: string[];
  constructor(roots: readonly string[]) {
    this.roots = roots.map(normalizeRoot);
  }

  async check(field: string, raw: unknown): Promise<Extract<Confined, { ok: true }>> {
    if (typeof raw !== 'string' || raw === '') throw invalidArgument(`${field} is required`);
    const c = await confine(raw, this.roots);
    if (!c.ok) throw invalidArgument(`${field} ${shown(raw, 200)} ${c.why}`);
    return c;
  }

  /**
   * Paths the CO asks about (volume_path of stats and expand): the node only
   * looks them up, so any path that cannot hold one of its volumes is NOT_FOUND.
   */
  async lookup(field: string, raw: unknown): Promise<Extract<Confined, { ok: true }>> {
    if (typeof raw !== 'string' || raw === '') throw invalidArgument(`${field} is required`);
    const c = await confine(raw, this.roots);
    if (!c.ok) throw notFound(`${field} ${shown(raw, 200)} ${c.why}, so no volume of this node is there`);
    if (!c.exists) throw notFound(`${field} ${shown(raw, 200)} does not exist`);
    return c;
  }
}
