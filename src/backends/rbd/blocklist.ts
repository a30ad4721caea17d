import { Code, DomainError } from '../../errors/domain-error.js';
import { CephCommandError, Errno, type CephCli } from './cli.js';

/** A client instance as `rbd status` and `ceph osd blocklist` name it: `ip:port/nonce` (what mon caps `profile rbd` accept). */
const CLIENT_ADDR_RE = /^(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]):\d{1,5}\/\d{1,10}$/;

export function isClientAddress(a: string): boolean {
  return CLIENT_ADDR_RE.test(a);
}

/**
 * Ceph's OSD blocklist, one client instance at a time (the address with its
 * nonce, never a whole host): a blocklisted instance's I/O fails with
 * ESHUTDOWN and the OSDs drop its watches. Adding is allowed by mon caps
 * `profile rbd` (librbd's exclusive lock does the same to a dead lock owner);
 * removing needs `allow command "osd blocklist"` on the mon (docs/rbd.md).
 */
export class CephBlocklist {
  constructor(private readonly cli: CephCli) {}

  async add(address: string, seconds: number): Promise<void> {
    if (!isClientAddress(address)) throw new DomainError(Code.INTERNAL, `will not blocklist "${address}": not one client instance (ip:port/nonce)`);
    await this.cli.ceph(['osd', 'blocklist', 'add', address, String(Math.round(seconds))], `fencing Ceph client ${address} (osd blocklist add)`);
  }

  /** 'refused' when the cephx user may not remove entries (the entry then expires on its own). */
  async remove(address: string): Promise<'removed' | 'refused'> {
    if (!isClientAddress(address)) return 'removed';
    try {
      await this.cli.ceph(['osd', 'blocklist', 'rm', address], `lifting the fence of Ceph client ${address} (osd blocklist rm)`);
      return 'removed';
    } catch (e) {
      if (e instanceof CephCommandError && e.errno === Errno.EACCES) return 'refused';
      throw e;
    }
  }

  async list(): Promise<{ addr: string; until: string }[]> {
    const out = await this.cli.ceph(['osd', 'blocklist', 'ls', '--format', 'json'], 'listing the OSD blocklist');
    // Pacific prints two arrays back to back: the client entries, then the range entries.
    return (JSON.parse(firstJsonValue(out) || 'null') as { addr: string; until: string }[] | null) ?? [];
  }
}

/** The first complete JSON array or object of `text` (brackets inside strings skipped). */
export function firstJsonValue(text: string): string {
  const start = text.search(/[[{]/);
  if (start < 0) return '';
  let depth = 0;
  let inString = false;
  for (let i = start; i < text.length; i++) {
    const ch = text[i];
    if (inString) {
      if (ch === '\\') i++;
      else if (ch === '"') inString = false;
    } else if (ch === '"') inString = true;
    else if (ch === '[' || ch === '{') depth++;
    else if (ch === ']' || ch === '}') if (--depth === 0) return text.slice(start, i + 1);
  }
  return text.slice(start);
}
