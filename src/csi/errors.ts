import { randomBytes } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { DomainError, type ErrorCode } from '../errors/domain-error.js';

/** The only place that knows gRPC status codes. */
const GRPC: Record<ErrorCode, status> = {
  'invalid-argument': status.INVALID_ARGUMENT,
  'not-found': status.NOT_FOUND,
  'already-exists': status.ALREADY_EXISTS,
  'failed-precondition': status.FAILED_PRECONDITION,
  'out-of-range': status.OUT_OF_RANGE,
  'resource-exhausted': status.RESOURCE_EXHAUSTED,
  aborted: status.ABORTED,
  unavailable: status.UNAVAILABLE,
  'permission-denied': status.PERMISSION_DENIED,
  'deadline-exceeded': status.DEADLINE_EXCEEDED,
  cancelled: status.CANCELLED,
  unimplemented: status.UNIMPLEMENTED,
  internal: status.INTERNAL,
};

export interface GrpcFailure {
  code: status;
  /** The status name, for the log line (NOT_FOUND …). */
  name: string;
  message: string;
  /** Set for an error nobody meant to send: the id the caller sees and the log line carries. */
  ref?: string;
}

/**
 * What the caller gets for anything thrown. A domain error keeps its code and
 * message; anything else (a bug, an fs error whose text can carry host paths)
 * becomes INTERNAL with a short reference that finds the full error in the log.
 */
export function grpcFailureOf(e: unknown): GrpcFailure {
  if (e instanceof DomainError) return { code: GRPC[e.code], name: status[GRPC[e.code]] ?? e.code, message: e.message };
  const ref = randomBytes(4).toString('hex');
  return { code: status.INTERNAL, name: 'INTERNAL', message: `internal error (ref ${ref}); the plugin's log has the details under that ref`, ref };
}

export function grpcStatusOf(code: ErrorCode): status {
  return GRPC[code];
}
