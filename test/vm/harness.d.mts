/** Types of harness.mjs (the VM test harness; see test/vm/README.md). */

export declare const VM_DIR: string;
/** The checkout; shared into every guest at this same path. */
export declare const CHECKOUT: string;

export interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
  rootfs: string;
  kernelVersion: string;
  /** Whether this call built it (false: it was cached). */
  built: boolean;
  buildMs: number;
}

export declare function cacheRoot(): string;
export declare function recipeHash(): string;
export declare function ensureGuest(opts?: { log?: (m: string) => void }): GuestImage;

export interface GuestShare {
  /** Host directory to share (over 9p, virtio). */
  hostPath: string;
  /** Where it appears in the guest; default the same path as on the host. */
  guestPath?: string;
  readonly?: boolean;
  /** 9p cache mode; `loose` (default) is fast, `none` sees host changes at once. */
  cache?: 'loose' | 'none' | 'mmap';
}

export interface GuestNetwork {
  /** Host 127.0.0.1:hostPort → guest 10.0.2.15:guestPort (TCP). */
  hostForwards?: { hostPort: number; guestPort: number }[];
}

export interface RunInGuestOptions {
  /** A shell script, run by /bin/sh in the guest as root. */
  command: string;
  /** Whole run, boot included; qemu is killed after it. Default 10 minutes. */
  timeoutMs?: number;
  /** A guest not at its command by then is killed and booted again (a stuck boot); default 150 s. */
  bootTimeoutMs?: number;
  /** Boots tried before a stuck boot is an error; default 3. */
  bootAttempts?: number;
  /** Extra shares besides the checkout (same path in the guest) and the host's node (`node` on PATH). */
  shares?: GuestShare[];
  /** Environment of the command (the guest also sets SINTER_IN_VM=1 and SINTER_VM_OUT). */
  env?: Record<string, string>;
  /** Working directory in the guest; default the checkout. */
  cwd?: string;
  /** Sizes in MiB of sparse scratch disks, /dev/vdb, /dev/vdc … in order. Deleted after the run. */
  scratchDisks?: number[];
  memoryMb?: number;
  cpus?: number;
  /** Daemons the guest's init starts besides udev; default ['dbus'] (targetcli needs it). */
  services?: string[];
  /** A virtio NIC on qemu's user-mode network (the guest is 10.0.2.15, gateway 10.0.2.2); default none. */
  network?: GuestNetwork;
  /** Appended to the guest kernel's command line. */
  kernelArgs?: string;
  /** Where the run's temporary directory goes; default os.tmpdir(). */
  tmpDir?: string;
  /** The command's output as it arrives (stdout and stderr together). */
  onOutput?: (chunk: string) => void;
  log?: (message: string) => void;
  signal?: AbortSignal;
}

export interface GuestResult {
  /** The command's exit status in the guest. */
  exitCode: number;
  /** The command's stdout and stderr, interleaved. */
  output: string;
  /** The guest kernel's console (boot messages, oopses). */
  consoleLog: string;
  qemuStderr: string;
  /** From qemu's start to the command's start. */
  bootMs: number;
  durationMs: number;
  /** Files the command wrote into $SINTER_VM_OUT, by name. */
  files: Record<string, Buffer>;
  kernelVersion: string;
}

/** Thrown when the guest cannot build, boot, or finish in time (never a normal non-zero exit). */
export declare class GuestError extends Error {
  consoleLog?: string;
  output?: string;
  stderr?: string;
  timedOut?: boolean;
  /** The guest never reached its command, on every boot attempt. */
  bootTimedOut?: boolean;
  files?: Record<string, Buffer>;
}

export declare function runInGuest(opts: RunInGuestOptions): Promise<GuestResult>;
