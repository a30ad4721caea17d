import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code, DomainError } from '../../src/errors/domain-error.js';
import { ExecError, type ExecOptions, type ExecResult, type Executor } from '../../src/exec/run.js';
import { closeEncrypted, encryptionOf, mapperName, openEncrypted, PASSPHRASE_KEY, resizeEncrypted } from '../../src/node/encryption.js';
import { parseParameters } from '../../src/controller/parameters.js';

/**
 * The LUKS step with a scripted executor: which cryptsetup commands run, with
 * what arguments and stdin, for each thing the device may hold. cryptsetup's
 * exit codes are those of cryptsetup(8) 2.6 (RETURN CODES); the real commands
 * run in the guest (test/vm/luks.vm.test.ts).
 */

type Reply = ExecResult | ExecError;
interface Call {
  line: string;
  args: string[];
  opts: ExecOptions;
}

class Scripted implements Executor {
  calls: Call[] = [];
  constructor(private readonly answer: (line: string) => Reply) {}
  async run(cmd: string, args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const line = [cmd, ...args].join(' ');
    this.calls.push({ line, args, opts });
    const r = this.answer(line);
    if (r instanceof ExecError) throw r;
    return r;
  }
}

const ok = (stdout = ''): ExecResult => ({ stdout, stderr: '', exitCode: 0 });
const exit = (exitCode: number, stdout = '', stderr = ''): ExecResult => ({ stdout, stderr, exitCode });
const fail = (line: string, code: number, stderr: string) => new ExecError(line, code, stderr, false);
const PASS = 'correct horse battery staple';
const log = pino({ level: 'silent' });

let dir: string;
let devA: string;
let devA2: string;
let devB: string;
beforeAll(() => {
  // Device nodes (root): the module compares devices by major:minor, as the kernel does.
  dir = mkdtempSync(join(tmpdir(), 'sinter-luks-unit-'));
  devA = join(dir, 'sdx');
  devA2 = join(dir, 'disk-by-path-sdx');
  devB = join(dir, 'sdy');
  execFileSync('mknod', [devA, 'b', '8', '240']);
  execFileSync('mknod', [devA2, 'b', '8', '240']);
  execFileSync('mknod', [devB, 'b', '8', '241']);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const status = (device: string) => ok(`/dev/mapper/x is active.\n  type:    LUKS2\n  cipher:  aes-xts-plain64\n  keysize: 512 bits\n  device:  ${device}\n  mode:    read/write\n`);
const inactive = exit(4, '/dev/mapper/x is inactive.\n');

function host(blkid: Reply, extra: (line: string) => Reply | undefined = () => undefined) {
  return new Scripted((line) => {
    const e = extra(line);
    if (e) return e;
    if (line.startsWith('cryptsetup status')) return inactive;
    if (line.startsWith('blkid -p')) return blkid;
    if (line.startsWith('cryptsetup luksFormat') || line.startsWith('cryptsetup open')) return ok();
    throw new Error(`unexpected: ${line}`);
  });
}

const req = (device: string, readOnly = false) => ({ volumeId: 'file-v1', device, name: mapperName('file-v1'), readOnly, encryption: { passphrase: PASS } });

async function refusal(p: Promise<unknown>): Promise<DomainError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(DomainError);
    return e as DomainError;
  }
  throw new Error('expected a refusal');
}

describe('encryption request: StorageClass parameter, volume_context, node-stage secret', () => {
  it('the controller accepts encrypted "true"/"false" and refuses anything else, naming the field', () => {
    expect(parseParameters({ encrypted: 'true' }).encrypted).toBe(true);
    expect(parseParameters({ encrypted: 'false' }).own).toEqual({ encrypted: 'false' });
    expect(() => parseParameters({ encrypted: 'yes' })).toThrow(/parameters\.encrypted must be "true" or "false"/);
  });

  it('a plain volume needs no secret; an encrypted one takes the passphrase from encryptionPassphrase', () => {
    expect(encryptionOf('file-v1', {}, {})).toBeUndefined();
    expect(encryptionOf('file-v1', { encrypted: 'false' }, {})).toBeUndefined();
    expect(encryptionOf('file-v1', { encrypted: 'true' }, { [PASSPHRASE_KEY]: PASS })).toEqual({ passphrase: PASS });
  });

  it('an encrypted volume without the secret key is FAILED_PRECONDITION naming the key, never a value', () => {
    const other = 'some-other-secret-value';
    let err: DomainError | undefined;
    try {
      encryptionOf('file-v1', { encrypted: 'true' }, { password: other });
    } catch (e) {
      err = e as DomainError;
    }
    expect(err?.code).toBe(Code.FAILED_PRECONDITION);
    expect(err?.message).toContain(PASSPHRASE_KEY);
    expect(err?.message).toContain('node-stage-secret-name');
    expect(err?.message).not.toContain(other);
    expect(() => encryptionOf('file-v1', { encrypted: 'maybe' }, {})).toThrow(/volume_context\.encrypted/);
  });

  it('mapper names stay within device-mapper\'s 127 characters and differ per volume', () => {
    expect(mapperName('file-1b4e28ba')).toBe('sinter-file-1b4e28ba');
    const long = `file-${'a'.repeat(123)}`;
    expect(mapperName(long).length).toBeLessThanOrEqual(127);
    expect(mapperName(long)).not.toBe(mapperName(`${long.slice(0, -1)}b`));
  });
});

describe('opening an encrypted volume', () => {
  it('a blank device gets a LUKS2 header, then is opened; the passphrase goes only to stdin', async () => {
    const exec = host(exit(2));
    const out = await openEncrypted({ exec, log }, req(devA));
    expect(out).toEqual({ path: '/dev/mapper/sinter-file-v1', opened: true });
    expect(exec.calls.map((c) => c.args[0] === '-p' ? 'blkid' : c.args[0])).toEqual(['status', 'blkid', 'luksFormat', 'open']);
    const format = exec.calls[2];
    const open = exec.calls[3];
    expect(format.args).toEqual(['luksFormat', '--batch-mode', '--type', 'luks2', '--key-file=-', devA]);
    expect(open.args).toEqual(['open', '--type', 'luks', '--disable-keyring', '--key-file=-', devA, 'sinter-file-v1']);
    for (const c of [format, open]) {
      expect(c.opts.input).toBe(PASS);
      expect(c.opts.secrets).toEqual([PASS]);
    }
    for (const c of exec.calls) expect(c.line).not.toContain(PASS);
  });

  it('the key-derivation cost, when configured, goes to luksFormat (cryptsetup\'s defaults otherwise)', async () => {
    const exec = host(exit(2));
    await openEncrypted({ exec, log, luksPbkdf: { iterTimeMs: 50, memoryKiB: 32768 } }, req(devA));
    expect(exec.calls[2].args).toEqual(['luksFormat', '--batch-mode', '--type', 'luks2', '--iter-time', '50', '--pbkdf-memory', '32768', '--key-file=-', devA]);
  });

  it('a fixed PBKDF2 iteration count (the VM tests\' setting) replaces the benchmark and the argon2 cost', async () => {
    const exec = host(exit(2));
    await openEncrypted({ exec, log, luksPbkdf: { iterTimeMs: 50, memoryKiB: 32768, pbkdf2Iterations: 1000 } }, req(devA));
    expect(exec.calls[2].args).toEqual(['luksFormat', '--batch-mode', '--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file=-', devA]);
  });

  it('a device with a LUKS header is opened, never formatted', async () => {
    const exec = host(ok('TYPE=crypto_LUKS\nVERSION=2\nUUID=0b3c\n'));
    await openEncrypted({ exec, log }, req(devA));
    expect(exec.calls.map((c) => c.args[0])).toEqual(['status', '-p', 'open']);
  });

  it.each([
    ['an ext4 filesystem', ok('TYPE=ext4\nUUID=1\n'), 'a filesystem (ext4)'],
    ['a partition table', ok('PTTYPE=gpt\n'), 'gpt partition table'],
    ['ambivalent signatures', exit(8, '', 'ambivalent result'), 'blkid cannot tell apart'],
  ])('a device holding %s is refused, and nothing is written', async (_what, blkid, says) => {
    const exec = host(blkid);
    const err = await refusal(openEncrypted({ exec, log }, req(devA)));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain(says);
    expect(err.message).toContain('never formats over data');
    expect(exec.calls.some((c) => c.args[0] === 'luksFormat' || c.args[0] === 'open')).toBe(false);
  });

  it('a blank device staged read-only is refused (no header is written under a reader)', async () => {
    const exec = host(exit(2));
    const err = await refusal(openEncrypted({ exec, log }, req(devA, true)));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toMatch(/read-only/);
    expect(exec.calls.some((c) => c.args[0] === 'luksFormat')).toBe(false);
  });

  it('an existing header is opened read-only for a read-only stage', async () => {
    const exec = host(ok('TYPE=crypto_LUKS\n'));
    await openEncrypted({ exec, log }, req(devA, true));
    expect(exec.calls.at(-1)!.args).toContain('--readonly');
  });

  it('a wrong passphrase (cryptsetup exit 2) is FAILED_PRECONDITION naming the secret key, not the value', async () => {
    const exec = host(ok('TYPE=crypto_LUKS\n'), (l) => (l.startsWith('cryptsetup open') ? fail(l, 2, 'No key available with this passphrase.') : undefined));
    const err = await refusal(openEncrypted({ exec, log }, req(devA)));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain(`key ${PASSPHRASE_KEY} does not open the LUKS header`);
    expect(err.message).not.toContain(PASS);
  });

  it('a mapping already open over the same device (by major:minor) is reused: a stage retried after a crash', async () => {
    const exec = host(exit(2), (l) => (l.startsWith('cryptsetup status') ? status(devA2) : undefined));
    expect(await openEncrypted({ exec, log }, req(devA))).toEqual({ path: '/dev/mapper/sinter-file-v1', opened: false });
    expect(exec.calls.map((c) => c.args[0])).toEqual(['status']);
  });

  it('a mapping of that name open over another device is refused, naming how to close it', async () => {
    const exec = host(exit(2), (l) => (l.startsWith('cryptsetup status') ? status(devB) : undefined));
    const err = await refusal(openEncrypted({ exec, log }, req(devA)));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain(`cryptsetup close sinter-file-v1`);
    expect(exec.calls.map((c) => c.args[0])).toEqual(['status']);
  });
});

describe('closing and growing', () => {
  it('closing a mapping that is not open does nothing; an open one is closed', async () => {
    const idle = host(exit(2));
    await closeEncrypted({ exec: idle, log }, 'file-v1', 'sinter-file-v1');
    expect(idle.calls.map((c) => c.args[0])).toEqual(['status']);
    const open = host(exit(2), (l) => (l.startsWith('cryptsetup status') ? status(devA) : l.startsWith('cryptsetup close') ? ok() : undefined));
    await closeEncrypted({ exec: open, log }, 'file-v1', 'sinter-file-v1');
    expect(open.calls.map((c) => c.line)).toEqual(['cryptsetup status sinter-file-v1', 'cryptsetup close sinter-file-v1']);
  });

  it('a mapping still in use (exit 5) is FAILED_PRECONDITION, not INTERNAL', async () => {
    const exec = host(exit(2), (l) =>
      l.startsWith('cryptsetup status') ? status(devA) : l.startsWith('cryptsetup close') ? fail(l, 5, 'Device sinter-file-v1 is still in use.') : undefined,
    );
    const err = await refusal(closeEncrypted({ exec, log }, 'file-v1', 'sinter-file-v1'));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toContain('still in use');
  });

  it('resize takes no passphrase (the key is in the dm table: opened with --disable-keyring)', async () => {
    const exec = host(exit(2), (l) => (l.startsWith('cryptsetup resize') ? ok() : undefined));
    await resizeEncrypted({ exec, log }, 'sinter-file-v1');
    expect(exec.calls).toHaveLength(1);
    expect(exec.calls[0].line).toBe('cryptsetup resize sinter-file-v1');
    expect(exec.calls[0].opts.input).toBeUndefined();
  });
});
