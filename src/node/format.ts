import { failedPrecondition, invalidArgument } from '../errors/domain-error.js';
import { ExecError, type Executor } from '../exec/run.js';
import { hostCommand } from './host-errors.js';
import { poll } from '../util/poll.js';
import { shown } from '../errors/domain-error.js';

import { DEFAULT_FS, isSupportedFs, SUPPORTED_FS, type FsType } from '../csi/capability.js';

export { DEFAULT_FS, isSupportedFs, SUPPORTED_FS, type FsType };

/** What `blkid -p` (low-level superblock and partition-table probing) found on a device. */
export type Probe =
  | { kind: 'blank' }
  | { kind: 'filesystem'; type: string }
  | { kind: 'partitioned'; ptType: string; type?: string }
  | { kind: 'ambivalent'; detail: string };

export function parseBlkidExport(stdout: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of stdout.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

/**
 * Probes the device itself (never the blkid cache). Exit 2 = no signature
 * found; exit 8 = several conflicting signatures ("ambivalent").
 */
export async function probe(exec: Executor, device: string): Promise<Probe> {
  const res = await hostCommand(
    `probing ${device} for a filesystem or partition table`,
    exec.run('blkid', ['-p', '-o', 'export', device], { okExitCodes: [2, 8] }),
  );
  if (res.exitCode === 2) return { kind: 'blank' };
  if (res.exitCode === 8) return { kind: 'ambivalent', detail: (res.stderr || res.stdout).trim().split('\n')[0] ?? '' };
  const tags = parseBlkidExport(res.stdout);
  if (tags.PTTYPE) return { kind: 'partitioned', ptType: tags.PTTYPE, type: tags.TYPE };
  if (tags.TYPE) return { kind: 'filesystem', type: tags.TYPE };
  // blkid answered 0 but named nothing we understand (e.g. only PART_ENTRY_*):
  // that is not "blank", so treat it as something we must not overwrite.
  return { kind: 'ambivalent', detail: res.stdout.trim().split('\n').join(' ') };
}

// Options that would override mkfs's own refusal to overwrite, or fill the
// new filesystem from a host directory or file.
const FORBIDDEN_MKFS: Record<FsType, RegExp> = {
  ext4: /^-(?:[a-zA-Z]*[Fd]|-)/,
  xfs: /^-(?:[a-zA-Z]*[fp]|-)/,
  btrfs: /^-(?:[a-zA-Z]*[fr]|-(?:force|rootdir|shrink))/,
};
const SAFE_ARG = /^[A-Za-z0-9=,._:+-]+$/;

/**
 * Splits volume_context mkfsOptions on whitespace and checks every word:
 * only [A-Za-z0-9=,._:+-] (so no paths), and no force or "populate from"
 * options. Bad options are the StorageClass's fault → INVALID_ARGUMENT.
 */
export function parseMkfsOptions(raw: string | undefined, fsType: FsType): string[] {
  if (raw === undefined || raw.trim() === '') return [];
  const words = raw.trim().split(/\s+/);
  if (words.length > 32) throw invalidArgument('volume_context.mkfsOptions has more than 32 words');
  for (const w of words) {
    if (!SAFE_ARG.test(w))
      throw invalidArgument(`volume_context.mkfsOptions word ${shown(w)} has characters other than letters, digits and = , . _ : + -; fix the StorageClass parameter`);
    if (FORBIDDEN_MKFS[fsType].test(w))
      throw invalidArgument(`volume_context.mkfsOptions word ${shown(w)} is not allowed for ${fsType} (sinter never forces mkfs or fills a filesystem from host files); remove it from the StorageClass`);
  }
  return words;
}

/**
 * Creates a filesystem. Never passes a force flag, so mkfs.xfs and
 * mkfs.btrfs would still refuse a device that has a signature; callers must
 * probe first anyway.
 */
export async function mkfs(exec: Executor, device: string, fsType: FsType, extra: string[]): Promise<void> {
  const quiet: Record<FsType, string[]> = { ext4: ['-q'], xfs: ['-q'], btrfs: ['-q'] };
  const run = () => exec.run(`mkfs.${fsType}`, [...quiet[fsType], ...extra, device], { timeoutMs: 10 * 60_000 });
  // A device just attached can be held open for a moment by another prober
  // (blkid, udev, a detach still finishing); mkfs then refuses it as busy.
  // It formats nothing in that case, so waiting and asking again is safe —
  // but only after probing again: whoever held the device may have written a
  // filesystem on it meanwhile, and a device that holds one is never
  // formatted (safety rule 1). One that now holds fsType needs nothing more.
  // Pauses of 250, 500 and 750 ms: four attempts in all.
  try {
    await poll(
      async ({ attempt }) => {
        if (attempt > 1 && !decideFormat(await probe(exec, device), device, fsType)) return true;
        await run().catch((e: unknown) => Promise.reject(new MkfsFailed(e)));
        return true;
      },
      { initialMs: 250, maxMs: 750, maxAttempts: 4, retryOn: (e) => e instanceof MkfsFailed && e.cause instanceof ExecError && /in use|busy/i.test(e.cause.stderr) },
    );
  } catch (e) {
    if (e instanceof MkfsFailed) return hostCommand(`formatting ${device} as ${fsType}`, Promise.reject(e.cause));
    throw e;
  }
}

/** Marks mkfs's own failure (wrapped as a host error) apart from the probe's (thrown as it is). */
class MkfsFailed extends Error {
  constructor(cause: unknown) {
    super('mkfs failed', { cause });
  }
}

/** Fails unless the device is blank or already holds fsType. Returns true when it must be formatted. */
export function decideFormat(p: Probe, device: string, fsType: FsType): boolean {
  switch (p.kind) {
    case 'blank':
      return true;
    case 'filesystem':
      if (p.type === fsType) return false;
      if (p.type === 'crypto_LUKS')
        throw failedPrecondition(
          `the volume's device ${device} holds a LUKS header (an encrypted volume); sinter never formats over one: stage it with volume_context encrypted "true" (StorageClass parameter encrypted) and its passphrase`,
        );
      throw failedPrecondition(
        `the volume's device ${device} already holds a ${p.type} filesystem, not the requested ${fsType}; sinter never reformats a device: ask for fs_type ${p.type}, or wipe the volume yourself`,
      );
    case 'partitioned':
      throw failedPrecondition(
        `the volume's device ${device} holds a ${p.ptType} partition table; sinter never formats over one: use block access, or wipe the volume yourself`,
      );
    case 'ambivalent':
      throw failedPrecondition(
        `the volume's device ${device} holds conflicting or unrecognized signatures (${p.detail || 'blkid was ambivalent'}); sinter will not format it: inspect it with 'blkid -p' and wipe it yourself if it is unused`,
      );
  }
}
