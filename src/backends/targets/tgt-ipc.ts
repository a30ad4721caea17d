import { stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { endianness } from 'node:os';

/**
 * tgtd's management socket, read directly: `tgtadm --op show --mode target`
 * without the tgtadm process. tgtadm is a thin client of this socket: it
 * sends one fixed request (struct tgtadm_req, usr/tgtadm.h of tgt 1.0.85,
 * Debian 12's; read from usr/tgtadm.c's ipc_mgmt_req and checked against
 * strace of that tgtadm) and writes the daemon's answer (struct tgtadm_rsp,
 * then the text usr/mgmt.c's target_mgmt OP_SHOW renders) to stdout. So the
 * text here is byte for byte what tgtadm prints, and parseTgtTargets reads it.
 *
 * Only reads go this way: every change stays a tgtadm call. The request's
 * layout has changed across tgt's history, so a socket is trusted only after
 * one of its answers matched tgtadm's own, and again after tgtd made a new
 * socket (a restart, maybe of another version); until then the caller reads
 * with tgtadm. Anything unexpected (no socket, refused, closed early, an
 * error code, a length out of range) answers undefined and the caller reads
 * with tgtadm, which reports the failure in its own words.
 */

/** usr/tgtadm.h: enum tgtadm_mode MODE_TARGET, enum tgtadm_op OP_SHOW, TGT_LLD_NAME_LEN, sizeof(struct tgtadm_req) on LP64. */
const MODE_TARGET = 1;
const OP_SHOW = 2;
const LLD_LEN = 64;
const REQ_LEN = 120;
const RSP_LEN = 8;
/** A show of thousands of targets is a few MiB; anything larger is not an answer to this request. */
const MAX_RSP = 64 * 1024 * 1024;

/** The request tgtadm 1.0.85 sends for `--lld iscsi --op show --mode target` (tid -1: all targets; lun -1). */
export function showTargetsRequest(): Buffer {
  const b = Buffer.alloc(REQ_LEN);
  const le = endianness() === 'LE';
  const u32 = (v: number, at: number) => (le ? b.writeUInt32LE(v, at) : b.writeUInt32BE(v, at));
  const i32 = (v: number, at: number) => (le ? b.writeInt32LE(v, at) : b.writeInt32BE(v, at));
  u32(MODE_TARGET, 0);
  u32(OP_SHOW, 4);
  b.write('iscsi', 8, LLD_LEN - 1, 'latin1');
  u32(REQ_LEN, 8 + LLD_LEN); // len: the request alone, no parameter text
  i32(-1, 8 + LLD_LEN + 4); // tid
  // sid (u64) at 80 stays 0; lun (u64) at 88 is -1; cid, host_no, device_type, ac_dir, pack, force stay 0.
  b.fill(0xff, 88, 96);
  return b;
}

/**
 * One request, one answer: the text of a successful answer (up to its
 * terminating NUL), undefined for anything else. Rejects only on timeout.
 */
export function tgtdShow(socketPath: string, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const sock = connect({ path: socketPath });
    const chunks: Buffer[] = [];
    let got = 0;
    let want = -1;
    let done = false;
    const finish = (v: string | undefined, err?: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(v);
    };
    const timer = setTimeout(() => finish(undefined, new Error(`tgtd did not answer on ${socketPath} within ${timeoutMs} ms`)), timeoutMs);
    sock.once('connect', () => sock.write(showTargetsRequest()));
    sock.on('data', (c: Buffer) => {
      chunks.push(c);
      got += c.length;
      if (want < 0 && got >= RSP_LEN) {
        const head = Buffer.concat(chunks);
        const le = endianness() === 'LE';
        const err = le ? head.readUInt32LE(0) : head.readUInt32BE(0);
        const len = le ? head.readUInt32LE(4) : head.readUInt32BE(4);
        if (err !== 0 || len < RSP_LEN || len > MAX_RSP) return finish(undefined);
        want = len;
      }
      if (want >= 0 && got >= want) {
        if (got > want) return finish(undefined);
        const body = Buffer.concat(chunks).subarray(RSP_LEN);
        const nul = body.indexOf(0);
        finish((nul < 0 ? body : body.subarray(0, nul)).toString('utf8'));
      }
    });
    sock.once('end', () => finish(undefined));
    sock.once('error', () => finish(undefined));
    sock.once('close', () => finish(undefined));
  });
}

/** What identifies one tgtd's socket: tgtd unlinks and binds it anew at every start (usr/mgmt.c ipc_init). */
async function socketIdentity(path: string): Promise<string | undefined> {
  const st = await stat(path, { bigint: true }).catch(() => undefined);
  if (!st || !st.isSocket()) return undefined;
  return `${st.dev}:${st.ino}:${st.ctimeNs}`;
}

/**
 * Reads tgtd's targets over its socket once this socket has answered as
 * tgtadm does. `viaTgtadm` is the read by the tgtadm process (the fallback,
 * and the reference a new socket is checked against).
 */
export class TgtdShowSocket {
  /** The socket identity whose answer matched tgtadm's. */
  private trusted: string | undefined;
  /** Mismatches per socket identity: after a few, that socket is left alone (the check costs a tgtadm read). */
  private readonly misses = new Map<string, number>();

  constructor(
    readonly path: string,
    private readonly timeoutMs: number,
    private readonly onEvent?: (what: 'trusted' | 'mismatch' | 'fallback', detail: Record<string, unknown>) => void,
  ) {}

  async show(viaTgtadm: () => Promise<string>): Promise<{ text: string; via: 'socket' | 'tgtadm' }> {
    const id = await socketIdentity(this.path);
    if (id === undefined || (this.misses.get(id) ?? 0) >= 3) return { text: await viaTgtadm(), via: 'tgtadm' };
    const text = await tgtdShow(this.path, this.timeoutMs);
    // The same socket before and after: a tgtd restarted in between may be another version.
    if (text === undefined || (await socketIdentity(this.path)) !== id) {
      this.onEvent?.('fallback', { socket: this.path });
      return { text: await viaTgtadm(), via: 'tgtadm' };
    }
    if (this.trusted === id) return { text, via: 'socket' };
    // A socket not yet seen answering as tgtadm does: read both and compare. A change made between
    // the two reads also makes them differ; that costs only another check on the next read.
    const reference = await viaTgtadm();
    if (reference === text) {
      this.trusted = id;
      this.onEvent?.('trusted', { socket: this.path });
    } else {
      this.misses.set(id, (this.misses.get(id) ?? 0) + 1);
      this.onEvent?.('mismatch', { socket: this.path, socketBytes: text.length, tgtadmBytes: reference.length });
    }
    return { text: reference, via: 'tgtadm' };
  }
}
